#include "trainloop/training_loop.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <utility>

#include "checkpoint_directory.h"
#include "distributed/coordinator.h"
#include "error_text.h"
#include "loop_checks.h"
#include "signals.h"
#include "step_precision.h"
#include "trainloop/error.h"

namespace trainloop {

namespace {

torch::Tensor to_device(const torch::Tensor& tensor, const torch::Device& device) {
  if (!tensor.defined() || tensor.device() == device) return tensor;
  if (device.is_cuda() && tensor.device().is_cpu()) {
    // From pinned memory the copy is asynchronous and overlaps with compute.
    return (tensor.is_pinned() ? tensor : tensor.pin_memory()).to(device, /*non_blocking=*/true);
  }
  return tensor.to(device);
}

// Metrics and predictions get float32 where autocast left a lower
// precision, so sums over many batches keep their digits.
torch::Tensor full_precision(const torch::Tensor& tensor) {
  const auto type = tensor.scalar_type();
  return type == torch::kHalf || type == torch::kBFloat16 ? tensor.to(torch::kFloat) : tensor;
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

// Ends the coordinator's fit (gradient hooks dropped) however the fit ends.
struct EndFitAtExit {
  detail::Coordinator& coordinator;
  ~EndFitAtExit() { coordinator.end_fit(); }
};

}  // namespace

int TrainingLoop::local_signal() const {
  return handle_signals_ ? detail::SignalGuard::pending() : 0;
}

void TrainingLoop::emit(Event event) {
  // A cancel takes effect once every callback has seen the event, so a
  // logger placed after early stopping still records the last epoch_end.
  // At fit_end every callback must still close its files, so a failure
  // there is thrown only after all have run.
  std::exception_ptr cancel;
  std::exception_ptr failure;
  std::optional<CancelScope> widest;
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
      if (!widest || c.scope() > *widest) {
        widest = c.scope();
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
void TrainingLoop::between(Event start, Event end, std::optional<CancelScope> absorbs, Body&& body,
                           Finish&& finish) {
  try {
    emit(start);
    body();
  } catch (const Cancel& cancel) {
    if (!absorbs || cancel.scope() > *absorbs) {
      if (cancel.scope() == CancelScope::fit) state_.stopping = true;
      emit(end);
      throw;
    }
  }
  finish();
  emit(end);
}

template <class Work>
void TrainingLoop::explain_failure(const std::string& what, Work&& work) {
  try {
    work();
  } catch (const Cancel&) {
    throw;
  } catch (const std::exception& e) {
    std::throw_with_nested(Error(fmt::format("{} (inputs {}, targets {}): {} failed: {}",
                                             detail::position(state_), detail::shape_text(state_.inputs),
                                             detail::shape_text(state_.targets), what,
                                             detail::first_line(e))));
  }
}

void TrainingLoop::begin_run(const Model& model, torch::Device device) {
  // Before the model moves: an unsupported precision is the error to see.
  precision_->start(device);
  model_.emplace(model);
  check_targets_ = true;
  model_->to(device);
  state_.device = device;
  state_.inputs = state_.targets = state_.outputs = state_.loss = torch::Tensor();
  state_.rank = coordinator_->rank();
  state_.world_size = coordinator_->world_size();
}

FitStatus TrainingLoop::fit(Model model, int64_t epochs, torch::Device device) {
  return fit(std::move(model), epochs, device, std::string());
}

FitStatus TrainingLoop::fit(Model model, int64_t epochs, torch::Device device,
                            const std::string& resume_from) {
  if (epochs < 0) throw Error(fmt::format("TrainingLoop::fit: epochs is {}, expected >= 0", epochs));
  const RestoreMode mode{model, model.is_training()};
  begin_run(model, device);
  detail::check_optimizer_parameters(optimizer_, *model_);
  state_.epoch = 0;
  state_.epoch_count = epochs;
  state_.global_step = 0;
  state_.stop_requested = state_.stopping = false;
  state_.interrupt_signal = 0;
  state_.resumed_from.clear();
  state_.history.clear();
  resume_batch_ = 0;
  coordinator_->distribute(training_, /*pad=*/true);
  if (validation_) coordinator_->distribute(validation_, /*pad=*/false);
  coordinator_->check_metrics(state_.training_metrics);
  // Held until fit returns, however it ends: another process writing the
  // same files fails at once instead of destroying this run's. In a
  // data-parallel fit rank 0 alone writes files.
  const std::vector<OutputLock> locks =
      state_.rank == 0 ? detail::lock_outputs(callbacks_) : std::vector<OutputLock>();
  // Everything that can fail about a checkpoint fails here, before fit_start
  // and before any training time is spent.
  std::optional<detail::LoadedCheckpoint> checkpoint;
  if (!resume_from.empty()) {
    checkpoint = detail::load_for_resume(resume_from);
    if (checkpoint) resume_batch_ = restore_position(*checkpoint);
  }
  coordinator_->start_fit(*model_, checkpoint ? state_.global_step : -1,
                          checkpoint ? resume_batch_ : -1);
  const EndFitAtExit end_fit{*coordinator_};
  std::optional<detail::SignalGuard> signals;
  if (handle_signals_) signals.emplace();
  bool cancelled = false;
  try {
    emit(Event::fit_start);
    if (checkpoint) restore_callbacks(*checkpoint);
    for (; state_.epoch < epochs; ++state_.epoch) {
      // Before epoch_end, which then sees this epoch in the history and, for
      // a signal that came while validating, the interrupt.
      between(Event::epoch_start, Event::epoch_end, CancelScope::epoch, [&] { run_epoch(); }, [&] {
        state_.history.push_back(state_.metric_values());
        if (handle_signals_ && state_.interrupt_signal == 0) {
          state_.interrupt_signal = coordinator_->signal_at_epoch_end(local_signal());
        }
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

void TrainingLoop::run_pass(data::BatchSource& source, Phase phase) {
  const bool training = phase == Phase::training;
  state_.phase = phase;
  // A resumed fit's first training pass starts where its checkpoint was
  // taken, with the metrics it had accumulated there.
  const int64_t first_batch = training ? std::exchange(resume_batch_, 0) : 0;
  state_.batch = first_batch;
  source.start_epoch(state_.epoch);
  state_.batch_count = source.batch_count();
  if (training) {
    state_.training_batch_count = state_.batch_count;
    coordinator_->start_training_pass(state_.epoch, state_.batch_count);
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
  between(
      start, end, std::nullopt,
      [&] {
        for (state_.batch = first_batch; state_.batch < state_.batch_count; ++state_.batch) {
          run_batch(source.batch(state_.batch));
          if (state_.stop_requested || state_.interrupt_signal != 0) throw CancelFit();
        }
      },
      [&] {
        // The end event and everything after see the values over all ranks.
        if (phase != Phase::prediction) coordinator_->combine_metrics(state_.phase_metrics());
      });
}

// Move the batch, step, metrics, backward, update.
void TrainingLoop::run_batch(const data::Batch& batch) {
  state_.inputs = to_device(batch.inputs, state_.device);
  state_.targets = to_device(batch.targets, state_.device);
  state_.outputs = state_.loss = torch::Tensor();
  state_.update_skipped = false;
  between(Event::batch_start, Event::batch_end, CancelScope::batch, [&] {
    explain_failure("the step", [&] { precision_->forward([&] { run_step(); }); });
    emit(Event::inference_prediction_end);
    if (state_.phase == Phase::prediction) {
      predictions_.push_back(full_precision(state_.outputs.detach()));
      return;
    }
    update_metrics();
    if (state_.phase == Phase::training) backward_and_update();
  }, [] {});
}

void TrainingLoop::run_step() {
  if (step_) {
    step_(state_, *model_, loss_);
    return;
  }
  state_.outputs = model_->forward(state_.inputs);
  if (std::exchange(check_targets_, false)) detail::check_class_targets(state_);
  if (state_.targets.defined()) state_.loss = loss_(state_.outputs, state_.targets);
}

void TrainingLoop::update_metrics() {
  if (!state_.loss.defined()) {
    throw Error(fmt::format("{}: the step left no loss (targets: {}); {} needs targets and a "
                            "loss (predict gives the outputs of inputs alone)",
                            detail::position(state_), detail::shape_text(state_.targets),
                            to_string(state_.phase)));
  }
  const torch::Tensor outputs = full_precision(state_.outputs.detach());
  const torch::Tensor loss = full_precision(state_.loss.detach());
  for (const auto& metric : state_.phase_metrics()) {
    explain_failure(fmt::format("metric \"{}\"", metric->name()),
                    [&] { metric->update(outputs, state_.targets, loss); });
  }
}

void TrainingLoop::backward_and_update() {
  const int64_t group_start = state_.batch - state_.batch % accumulation_;
  const int64_t group_size = std::min(accumulation_, state_.batch_count - group_start);
  if (state_.batch == group_start) optimizer_.zero_grad();
  const bool updates = state_.batch + 1 == group_start + group_size;
  if (updates) coordinator_->before_backward(/*fresh=*/state_.batch == group_start, local_signal());
  explain_failure("backward", [&] {
    precision_->backward(group_size == 1 ? state_.loss
                                         : state_.loss / static_cast<double>(group_size));
  });
  // Only after an update: a checkpoint inside a gradient-accumulation group
  // would lose the gradients gathered so far.
  if (!updates) return;
  coordinator_->after_backward();
  const bool found_inf = precision_->unscale(optimizer_);
  // Every rank skips alike (with averaged gradients they agree anyway).
  // Callbacks read the flag; the loop keeps its own copy.
  const bool skip = precision_->scaler() != nullptr && coordinator_->any(found_inf);
  state_.update_skipped = skip;
  emit(Event::update_start);
  precision_->update(optimizer_, skip);
  if (!skip) ++state_.global_step;
  if (handle_signals_ && state_.interrupt_signal == 0) {
    state_.interrupt_signal = coordinator_->signal_after_update(local_signal());
  }
}

std::map<std::string, double> TrainingLoop::evaluate(Model model, data::DataSource data,
                                                     torch::Device device) {
  if (!data) throw Error("TrainingLoop::evaluate: no data");
  const RestoreMode mode{model, model.is_training()};
  begin_run(model, device);
  coordinator_->distribute(data, /*pad=*/false);
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
  // Every rank predicts all of it, even data an earlier run split.
  coordinator_->make_whole(data);
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
