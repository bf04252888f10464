#include "trainloop/training_loop.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <exception>
#include <map>
#include <set>
#include <utility>

#include "checkpoint_restore.h"
#include "distributed/data_parallel.h"
#include "error_text.h"
#include "distributed/gradient_reducer.h"
#include "signals.h"
#include "trainloop/error.h"

namespace trainloop {

namespace {

constexpr int kSwallowNone = 0;
constexpr int kBatchLevel = 1;
constexpr int kEpochLevel = 2;
constexpr int kFitLevel = 3;

int level_of(const Cancel& cancel) {
  if (dynamic_cast<const CancelBatch*>(&cancel) != nullptr) return kBatchLevel;
  if (dynamic_cast<const CancelEpoch*>(&cancel) != nullptr) return kEpochLevel;
  return kFitLevel;
}

torch::Tensor to_device(const torch::Tensor& tensor, const torch::Device& device) {
  if (!tensor.defined() || tensor.device() == device) return tensor;
  if (device.is_cuda() && tensor.device().is_cpu()) {
    // From pinned memory the copy is asynchronous and overlaps with compute.
    return (tensor.is_pinned() ? tensor : tensor.pin_memory()).to(device, /*non_blocking=*/true);
  }
  return tensor.to(device);
}

std::string shape_text(const torch::Tensor& tensor) {
  if (!tensor.defined()) return "none";
  return fmt::format("{} [{}]", c10::toString(tensor.scalar_type()), fmt::join(tensor.sizes(), ", "));
}

// Where the loop is, for an error: "training, epoch 2/10, batch 5/100".
std::string position(const LoopState& state) {
  if (state.phase == Phase::training || state.phase == Phase::validation) {
    return fmt::format("{}, epoch {}/{}, batch {}/{}", to_string(state.phase), state.epoch + 1,
                       state.epoch_count, state.batch + 1, state.batch_count);
  }
  return fmt::format("{}, batch {}/{}", to_string(state.phase), state.batch + 1, state.batch_count);
}

// Class targets (one integer per row) beyond the outputs' width would make
// the loss fail deep inside LibTorch, or, on a GPU, end the process with a
// device-side assert: checked once, on a fit's first batch.
void check_class_targets(const LoopState& state) {
  const torch::Tensor& outputs = state.outputs;
  const torch::Tensor& targets = state.targets;
  if (!outputs.defined() || !targets.defined() || outputs.dim() != 2 || outputs.size(1) < 2 ||
      targets.dim() != 1 || targets.size(0) != outputs.size(0) || targets.numel() == 0 ||
      !c10::isIntegralType(targets.scalar_type(), /*includeBool=*/false)) {
    return;
  }
  const int64_t low = targets.min().item<int64_t>();
  const int64_t high = targets.max().item<int64_t>();
  const int64_t classes = outputs.size(1);
  if (low < 0 || high >= classes) {
    throw Error(fmt::format("class targets reach {}, but the model's outputs ({}) give {} classes: "
                            "expected targets 0 to {}",
                            low < 0 ? low : high, shape_text(outputs), classes, classes - 1));
  }
}

// Unless one of the optimizer's parameters is the model's, the fit would
// train nothing and still report success.
void check_optimizer_parameters(torch::optim::Optimizer& optimizer, const Model& model) {
  std::set<const void*> model_parameters;
  for (const auto& parameter : model.parameters()) {
    model_parameters.insert(parameter.unsafeGetTensorImpl());
  }
  int64_t count = 0;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) {
      if (model_parameters.count(parameter.unsafeGetTensorImpl()) != 0) return;
      ++count;
    }
  }
  // An optimizer of no parameters is a deliberate choice, not a mix-up.
  if (count == 0) return;
  throw Error(fmt::format("TrainingLoop::fit: none of the optimizer's {} parameters is a parameter "
                          "of the model ({} parameters); build the optimizer over "
                          "model->parameters() of the model passed to fit",
                          count, model_parameters.size()));
}

// Puts the model back into the mode it was in when fit, evaluate or
// predict began.
struct RestoreMode {
  Model& model;
  bool training;
  ~RestoreMode() {
    try {
      model.train(training);
    } catch (...) {
    }
  }
};

// What travels with the gradients in a data-parallel fit, summed over the
// ranks: how many have a SIGINT pending, and how many a SIGTERM.
constexpr int64_t kControlValues = 2;

std::vector<double> signal_control(bool handle_signals) {
  const int pending = handle_signals ? detail::SignalGuard::pending() : 0;
  return {pending == SIGINT ? 1.0 : 0.0, pending == SIGTERM ? 1.0 : 0.0};
}

int agreed_signal(const std::vector<double>& summed) {
  if (summed[0] > 0) return SIGINT;
  if (summed[1] > 0) return SIGTERM;
  return 0;
}

// Drops the gradient hooks when a fit ends, however it ends.
struct ReleaseAtExit {
  std::shared_ptr<detail::GradientReducer>& reducer;
  ~ReleaseAtExit() { reducer.reset(); }
};

}  // namespace

TrainingLoop::TrainingLoop(data::DataSource training, data::DataSource validation,
                           torch::optim::Optimizer& optimizer, LossFunction loss,
                           std::vector<std::shared_ptr<Metric>> metrics,
                           std::vector<std::shared_ptr<Callback>> callbacks)
    : training_(std::move(training)),
      validation_(std::move(validation)),
      optimizer_(optimizer),
      loss_(std::move(loss)),
      callbacks_(std::move(callbacks)) {
  if (!training_) throw Error("TrainingLoop: no training data");
  if (!loss_) throw Error("TrainingLoop: the loss function is empty");
  std::set<std::string> names;
  for (size_t i = 0; i < metrics.size(); ++i) {
    if (!metrics[i]) throw Error(fmt::format("TrainingLoop: metric {} is null", i));
    if (!names.insert(metrics[i]->name()).second) {
      throw Error(fmt::format("TrainingLoop: two metrics are named \"{}\"", metrics[i]->name()));
    }
  }
  if (names.count("loss") == 0) metrics.insert(metrics.begin(), metrics::loss());
  for (const auto& metric : metrics) state_.validation_metrics.push_back(metric->clone());
  state_.training_metrics = std::move(metrics);
  for (size_t i = 0; i < callbacks_.size(); ++i) {
    if (!callbacks_[i]) throw Error(fmt::format("TrainingLoop: callback {} is null", i));
  }
  sort_callbacks();
  state_.optimizer = &optimizer_;
}

void TrainingLoop::sort_callbacks() {
  std::stable_sort(callbacks_.begin(), callbacks_.end(),
                   [](const auto& a, const auto& b) { return a->order() < b->order(); });
}

Model& TrainingLoop::model() {
  if (!model_) throw Error("TrainingLoop::model: no fit, evaluate or predict has started");
  return *model_;
}

TrainingLoop& TrainingLoop::step(Step step) {
  if (!step) throw Error("TrainingLoop::step: the step function is empty");
  step_ = std::move(step);
  return *this;
}

TrainingLoop& TrainingLoop::accumulate_gradients(int64_t batches) {
  if (batches < 1) {
    throw Error(fmt::format("TrainingLoop::accumulate_gradients: {} batches, expected >= 1", batches));
  }
  accumulation_ = batches;
  return *this;
}

TrainingLoop& TrainingLoop::add_callback(std::shared_ptr<Callback> callback) {
  if (!callback) throw Error("TrainingLoop::add_callback: the callback is null");
  callbacks_.push_back(std::move(callback));
  sort_callbacks();
  return *this;
}

TrainingLoop& TrainingLoop::handle_signals(bool on) {
  handle_signals_ = on;
  return *this;
}

TrainingLoop& TrainingLoop::data_parallel(std::shared_ptr<distributed::ProcessGroup> group,
                                          distributed::DataParallelOptions options) {
  if (options.bucket_bytes() < 1) {
    throw Error(fmt::format("TrainingLoop::data_parallel: bucket_bytes is {}, expected >= 1",
                            options.bucket_bytes()));
  }
  group_ = std::move(group);
  parallel_options_ = options;
  return *this;
}

void TrainingLoop::poll_interrupt() {
  if (!handle_signals_ || state_.interrupt_signal != 0) return;
  // Data-parallel, what the ranks agreed at this update's gradient
  // reduction, so that every rank stops after the same update.
  state_.interrupt_signal = reducer_ ? agreed_signal_ : detail::SignalGuard::pending();
}

void TrainingLoop::poll_interrupt_at_epoch_end() {
  if (!reducer_) {
    poll_interrupt();
    return;
  }
  if (!handle_signals_ || state_.interrupt_signal != 0) return;
  const std::vector<double> local = signal_control(handle_signals_);
  torch::Tensor summed = torch::tensor(local, torch::kDouble);
  group_->all_reduce(summed);
  state_.interrupt_signal =
      agreed_signal({summed[0].item<double>(), summed[1].item<double>()});
}

void TrainingLoop::shard(const data::DataSource& source, bool pad) {
  source->shard(state_.rank, state_.world_size, pad);
  for (const auto& known : sharded_) {
    if (&*known == &*source) return;
  }
  sharded_.push_back(source);
}

void TrainingLoop::unshard(const data::DataSource& source) {
  for (auto known = sharded_.begin(); known != sharded_.end(); ++known) {
    if (&**known == &*source) {
      source->shard(0, 1, false);
      sharded_.erase(known);
      return;
    }
  }
}

void TrainingLoop::start_data_parallel_fit(bool resumed) {
  const std::vector<torch::Tensor> parameters = model_->parameters();
  int64_t elements = 0;
  for (const auto& parameter : parameters) elements += parameter.numel();
  // Ranks that resume from different checkpoints, or train different
  // models, would exchange garbage: say so at once, on every rank.
  detail::check_same_on_every_rank(
      *group_, {{"resumed global steps (-1: a fresh fit)", resumed ? state_.global_step : -1},
                {"resumed batches (-1: a fresh fit)", resumed ? resume_batch_ : -1},
                {"model parameter counts", static_cast<int64_t>(parameters.size())},
                {"model parameter elements", elements}});
  detail::broadcast_model(*group_, *model_);
  reducer_ = std::make_shared<detail::GradientReducer>(group_, parameters, parallel_options_,
                                                       kControlValues);
  agreed_signal_ = 0;
}

void TrainingLoop::emit(Event event) {
  // A cancel takes effect once every callback has seen the event, so a
  // logger placed after early stopping still records the last epoch_end.
  // At fit_end every callback must still close its files, so a failure
  // there is thrown only after all have run.
  std::exception_ptr cancel;
  std::exception_ptr failure;
  int cancel_level = 0;
  for (const auto& callback : callbacks_) {
    if (state_.rank != 0 && callback->rank_zero_only()) continue;
    try {
      try {
        callback->on_event(event, *this);
      } catch (const Cancel&) {
        throw;
      } catch (const std::exception& e) {
        std::throw_with_nested(Error(fmt::format("callback {} failed at {}: {}", callback->state_key(),
                                                 to_string(event), e.what())));
      }
    } catch (const Cancel& c) {
      if (level_of(c) > cancel_level) {
        cancel_level = level_of(c);
        cancel = std::current_exception();
      }
    } catch (const Error&) {
      if (event != Event::fit_end) throw;
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  if (cancel) std::rethrow_exception(cancel);
}

template <class Body, class Finish>
void TrainingLoop::phase(Event start, Event end, int cancel_level, Body&& body, Finish&& finish) {
  try {
    emit(start);
    body();
  } catch (const Cancel& cancel) {
    if (level_of(cancel) > cancel_level) {
      if (level_of(cancel) == kFitLevel) state_.stop_requested = true;
      emit(end);
      throw;
    }
  }
  finish();
  emit(end);
}

template <class Body>
void TrainingLoop::phase(Event start, Event end, int cancel_level, Body&& body) {
  phase(start, end, cancel_level, std::forward<Body>(body), [] {});
}

std::vector<OutputLock> TrainingLoop::lock_outputs() const {
  // In a data-parallel fit only rank 0 writes files; the others locking the
  // same outputs would only fail against it.
  std::vector<OutputLock> locks;
  if (state_.rank != 0) return locks;
  std::map<std::string, std::string> writers;
  for (const auto& callback : callbacks_) {
    for (const auto& output : callback->outputs()) {
      // Holds in one process count, so a second writer of the same output
      // is found by its lock file, not by the lock.
      locks.emplace_back(output.path, output.kind);
      const auto [known, fresh] = writers.emplace(locks.back().lock_file(), callback->state_key());
      if (!fresh) {
        throw Error(fmt::format("TrainingLoop::fit: callbacks {} and {} both write {}; give one "
                                "of them another path",
                                known->second, callback->state_key(), output.path));
      }
    }
  }
  return locks;
}

template <class Work>
void TrainingLoop::explain_failure(const std::string& what, Work&& work) {
  try {
    work();
  } catch (const Cancel&) {
    throw;
  } catch (const std::exception& e) {
    std::throw_with_nested(Error(fmt::format("{} (inputs {}, targets {}): {} failed: {}",
                                             position(state_), shape_text(state_.inputs),
                                             shape_text(state_.targets), what,
                                             detail::first_line(e))));
  }
}

void TrainingLoop::record_history() { state_.history.push_back(state_.metric_values()); }

void TrainingLoop::begin_run(const Model& model, torch::Device device) {
  model_.emplace(model);
  check_targets_ = true;
  model_->to(device);
  state_.device = device;
  state_.inputs = state_.targets = state_.outputs = state_.loss = torch::Tensor();
  const bool parallel = data_parallel_run();
  state_.rank = parallel ? group_->rank() : 0;
  state_.world_size = parallel ? group_->world_size() : 1;
  if (!parallel) {
    // Data sharded by an earlier data-parallel run is whole again.
    while (!sharded_.empty()) unshard(sharded_.back());
  }
}

FitStatus TrainingLoop::fit(Model model, int64_t epochs, torch::Device device) {
  return fit(std::move(model), epochs, device, std::string());
}

FitStatus TrainingLoop::fit(Model model, int64_t epochs, torch::Device device,
                            const std::string& resume_from) {
  if (epochs < 0) throw Error(fmt::format("TrainingLoop::fit: epochs is {}, expected >= 0", epochs));
  const RestoreMode mode{model, model.is_training()};
  begin_run(model, device);
  check_optimizer_parameters(optimizer_, *model_);
  state_.epoch = 0;
  state_.epoch_count = epochs;
  state_.global_step = 0;
  state_.stop_requested = false;
  state_.interrupt_signal = 0;
  state_.resumed_from.clear();
  state_.history.clear();
  resume_batch_ = 0;
  if (data_parallel_run()) {
    shard(training_, /*pad=*/true);
    if (validation_) shard(validation_, /*pad=*/false);
    detail::check_reducible(state_.training_metrics);
  }
  // Held until fit returns, however it ends: another process writing the
  // same files fails at once instead of destroying this run's.
  const std::vector<OutputLock> locks = lock_outputs();
  // Everything that can fail about a checkpoint fails here, before fit_start
  // and before any training time is spent.
  std::optional<detail::LoadedCheckpoint> checkpoint;
  if (!resume_from.empty()) {
    checkpoint = detail::load_for_resume(resume_from);
    if (checkpoint) resume_batch_ = detail::restore_loop(*this, *checkpoint);
  }
  const ReleaseAtExit release{reducer_};
  if (data_parallel_run()) start_data_parallel_fit(checkpoint.has_value());
  std::optional<detail::SignalGuard> signals;
  if (handle_signals_) signals.emplace();
  bool cancelled = false;
  try {
    emit(Event::fit_start);
    if (checkpoint) detail::restore_callbacks(*this, *checkpoint);
    for (; state_.epoch < epochs; ++state_.epoch) {
      // Before epoch_end, which then sees this epoch in the history and, for
      // a signal that came while validating, the interrupt.
      phase(Event::epoch_start, Event::epoch_end, kEpochLevel, [&] { run_epoch(); }, [&] {
        record_history();
        poll_interrupt_at_epoch_end();
      });
      if (state_.stop_requested || state_.interrupt_signal != 0) throw CancelFit();
    }
  } catch (const Cancel&) {
    cancelled = true;
  } catch (...) {
    // fit_end still runs so callbacks close and flush their files; the
    // original error is the one the caller sees.
    try {
      emit(Event::fit_end);
    } catch (...) {
    }
    throw;
  }
  emit(Event::fit_end);
  if (state_.interrupt_signal != 0) return FitStatus::interrupted;
  return cancelled ? FitStatus::cancelled : FitStatus::completed;
}

void TrainingLoop::run_epoch() {
  run_pass(*training_, Phase::training);
  if (validation_) run_pass(*validation_, Phase::validation);
}

void TrainingLoop::run_pass(data::BatchSource& source, Phase phase_kind) {
  const bool training = phase_kind == Phase::training;
  state_.phase = phase_kind;
  // A resumed fit's first training pass starts where its checkpoint was
  // taken, with the metrics it had accumulated there.
  const int64_t first_batch = training ? std::exchange(resume_batch_, 0) : 0;
  state_.batch = first_batch;
  source.start_epoch(state_.epoch);
  state_.batch_count = source.batch_count();
  if (training) state_.training_batch_count = state_.batch_count;
  if (training && reducer_) {
    // Each batch is one collective: a rank with fewer would leave the
    // others waiting.
    detail::check_same_on_every_rank(
        *group_, {{fmt::format("training batches in epoch {}", state_.epoch), state_.batch_count}});
  }
  if (first_batch > state_.batch_count) {
    throw Error(fmt::format("TrainingLoop: resuming at training batch {} of epoch {}, but the "
                            "training data has {} batches",
                            first_batch, state_.epoch, state_.batch_count));
  }
  model_->train(training);
  if (first_batch == 0) {
    for (const auto& metric : state_.phase_metrics()) metric->reset();
  }
  std::optional<torch::NoGradGuard> no_grad;
  if (!training) no_grad.emplace();
  const Event start = training ? Event::training_start : Event::validation_start;
  const Event end = training ? Event::training_end : Event::validation_end;
  phase(
      start, end, kSwallowNone,
      [&] {
        for (state_.batch = first_batch; state_.batch < state_.batch_count; ++state_.batch) {
          run_batch(source.batch(state_.batch));
          if (state_.stop_requested || state_.interrupt_signal != 0) throw CancelFit();
        }
      },
      [&] {
        // The end event and everything after see the values over all ranks.
        if (data_parallel_run() && phase_kind != Phase::prediction) {
          detail::reduce_metrics(*group_, state_.phase_metrics());
        }
      });
}

void TrainingLoop::run_batch(const data::Batch& batch) {
  state_.inputs = to_device(batch.inputs, state_.device);
  state_.targets = to_device(batch.targets, state_.device);
  state_.outputs = state_.loss = torch::Tensor();
  phase(Event::batch_start, Event::batch_end, kBatchLevel, [&] {
    explain_failure("the step", [&] { run_step(); });
    emit(Event::inference_prediction_end);
    if (state_.phase == Phase::prediction) {
      predictions_.push_back(state_.outputs.detach());
      return;
    }
    if (!state_.loss.defined()) {
      throw Error(fmt::format("{}: the step left no loss (targets: {}); {} needs targets and a "
                              "loss (predict gives the outputs of inputs alone)",
                              position(state_), shape_text(state_.targets),
                              to_string(state_.phase)));
    }
    {
      const torch::Tensor outputs = state_.outputs.detach();
      const torch::Tensor loss = state_.loss.detach();
      for (const auto& metric : state_.phase_metrics()) {
        explain_failure(fmt::format("metric \"{}\"", metric->name()),
                        [&] { metric->update(outputs, state_.targets, loss); });
      }
    }
    if (state_.phase != Phase::training) return;
    const int64_t group_start = state_.batch - state_.batch % accumulation_;
    const int64_t group_size = std::min(accumulation_, state_.batch_count - group_start);
    if (state_.batch == group_start) optimizer_.zero_grad();
    const bool updates = state_.batch + 1 == group_start + group_size;
    // Data-parallel, only the backward before an update is reduced; its hooks
    // start all-reducing while it runs.
    if (reducer_ && updates) {
      reducer_->prepare(/*fresh=*/state_.batch == group_start, signal_control(handle_signals_));
    }
    explain_failure("backward", [&] {
      if (group_size == 1) {
        state_.loss.backward();
      } else {
        (state_.loss / static_cast<double>(group_size)).backward();
      }
    });
    if (!updates) return;
    if (reducer_) agreed_signal_ = agreed_signal(reducer_->finish());
    emit(Event::update_start);
    optimizer_.step();
    ++state_.global_step;
    // Only after an update: a checkpoint inside a gradient-accumulation group
    // would lose the gradients gathered so far.
    poll_interrupt();
  });
}

void TrainingLoop::run_step() {
  if (step_) {
    step_(state_, *model_, loss_);
    return;
  }
  state_.outputs = model_->forward(state_.inputs);
  if (std::exchange(check_targets_, false)) check_class_targets(state_);
  if (state_.targets.defined()) state_.loss = loss_(state_.outputs, state_.targets);
}

std::map<std::string, double> TrainingLoop::evaluate(Model model, data::DataSource data,
                                                     torch::Device device) {
  if (!data) throw Error("TrainingLoop::evaluate: no data");
  const RestoreMode mode{model, model.is_training()};
  begin_run(model, device);
  if (data_parallel_run()) shard(data, /*pad=*/false);
  try {
    run_pass(*data, Phase::evaluation);
  } catch (const Cancel&) {
    // A cancel ends the evaluation early; the metrics cover what ran.
  }
  std::map<std::string, double> result;
  for (const auto& metric : state_.validation_metrics) result[metric->name()] = metric->compute();
  return result;
}

torch::Tensor TrainingLoop::predict(Model model, data::DataSource data, torch::Device device) {
  if (!data) throw Error("TrainingLoop::predict: no data");
  if (data->shuffles()) {
    throw Error("TrainingLoop::predict: the data shuffles its examples, so the rows of the "
                "outputs would not follow its order; predict over data::Batches (or a source "
                "with shuffle(false))");
  }
  const RestoreMode mode{model, model.is_training()};
  begin_run(model, device);
  // Every rank predicts all of it, even data an earlier run sharded.
  unshard(data);
  predictions_.clear();
  try {
    run_pass(*data, Phase::prediction);
  } catch (const Cancel&) {
    // A cancel ends the prediction early; the outputs cover what ran.
  }
  std::vector<torch::Tensor> outputs = std::move(predictions_);
  predictions_.clear();
  if (outputs.empty()) return torch::Tensor();
  return torch::cat(outputs, 0).cpu();
}

}  // namespace trainloop
