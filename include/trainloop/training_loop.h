#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/callback.h"
#include "trainloop/data/epochs.h"
#include "trainloop/distributed.h"
#include "trainloop/event.h"
#include "trainloop/loop_state.h"
#include "trainloop/losses.h"
#include "trainloop/metrics.h"
#include "trainloop/model.h"
#include "trainloop/output_lock.h"

namespace trainloop {

namespace detail {
class GradientReducer;
}

/// How a fit ended.
enum class FitStatus {
  completed,  ///< every epoch ran
  cancelled,  ///< a callback threw `CancelFit` or set `stop_requested`
  interrupted,  ///< SIGINT or SIGTERM arrived (see `handle_signals`); the
                ///< signal is in `state().interrupt_signal`
};

/// The generalized training loop: owns the data, loss, metrics and callbacks,
/// drives an optimizer, and runs callbacks at every `Event`.
///
/// Example:
///   TrainingLoop loop(data::Epochs(train, 64).seed(42), data::Batches(test, 256),
///                     optimizer, losses::cross_entropy, {metrics::accuracy()},
///                     {callbacks::progress()});
///   loop.fit(model, 10, torch::kCPU);
class TRAINLOOP_API TrainingLoop {
 public:
  /// Computes `state.outputs` from `state.inputs` and, when `state.targets`
  /// is defined, `state.loss`. Replace it for models that need more than
  /// `loss(model(inputs), targets)`.
  using Step = std::function<void(LoopState& state, const Model& model, const LossFunction& loss)>;

  /// `validation` may be `nullptr` (no validation). The optimizer is used by
  /// reference and must outlive the loop. A loss metric named "loss" is
  /// added in front of `metrics` unless one is given.
  TrainingLoop(data::DataSource training, data::DataSource validation,
               torch::optim::Optimizer& optimizer, LossFunction loss,
               std::vector<std::shared_ptr<Metric>> metrics = {},
               std::vector<std::shared_ptr<Callback>> callbacks = {});

  /// Trains `model` for `epochs` epochs on `device` (moving the model and
  /// each batch there), validating after each epoch. `fit_end` runs however
  /// the fit ends; an exception from a callback is rethrown as `Error` naming
  /// the callback and event, after `fit_end`; one from the step (forward,
  /// loss), a metric or backward as `Error` naming the phase, epoch, batch,
  /// the batch's shapes and the first line of the original message (which
  /// stays nested). Before fit_start it takes an `OutputLock` on every
  /// output the callbacks declare (`Callback::outputs`) and checks that the
  /// optimizer updates the model's parameters; on the first batch, that
  /// class targets fit the outputs' width. The model is left in the
  /// training mode it had.
  FitStatus fit(Model model, int64_t epochs, torch::Device device = torch::kCPU);

  /// Like `fit`, but first restores everything a checkpoint holds — weights,
  /// optimizer, loop position, generators, metrics, history and every
  /// callback's state — and continues at the exact batch where it was
  /// taken, so the result equals that of a fit that never stopped (bit for
  /// bit on the CPU). `resume_from` is a checkpoint directory, or a
  /// directory of checkpoints (e.g. the one given to `callbacks::checkpoint`),
  /// from which the newest valid one is taken: invalid ones are skipped and
  /// reported on stderr (the first by name, the rest by count). A path that
  /// does not exist yet or holds no checkpoint starts a fresh fit (said on
  /// stderr), so a program may always pass its checkpoint directory. Throws
  /// `Error` before fit_start when every checkpoint in it is invalid, or the
  /// checkpoint does not match the model (naming the first differing
  /// parameter) or the data.
  FitStatus fit(Model model, int64_t epochs, torch::Device device,
                const std::string& resume_from);

  /// Runs `data` through the model without gradients and returns every
  /// metric by name ("loss", "accuracy", …). Data without targets (no loss)
  /// is an `Error`.
  std::map<std::string, double> evaluate(Model model, data::DataSource data,
                                         torch::Device device = torch::kCPU);

  /// Runs `data` through the model without gradients and returns all
  /// outputs concatenated along dimension 0, on the CPU, in the data's
  /// order: a source that shuffles (`BatchSource::shuffles`) is an `Error`.
  torch::Tensor predict(Model model, data::DataSource data, torch::Device device = torch::kCPU);

  /// The state callbacks read and change.
  LoopState& state() { return state_; }
  const LoopState& state() const { return state_; }
  /// The model of the running fit, evaluate or predict.
  Model& model();
  torch::optim::Optimizer& optimizer() { return optimizer_; }
  const std::vector<std::shared_ptr<Callback>>& callbacks() const { return callbacks_; }
  /// The training data given to the constructor.
  const data::DataSource& training_data() const { return training_; }
  /// The validation data given to the constructor (may be empty).
  const data::DataSource& validation_data() const { return validation_; }
  /// The loss function given to the constructor.
  const LossFunction& loss_function() const { return loss_; }

  /// Replaces the step (see `Step`).
  TrainingLoop& step(Step step);
  /// Accumulates gradients over `batches` training batches and updates once
  /// per group (default 1: every batch). Each batch's loss is divided by the
  /// group's batch count before backward, so for a mean-reduced loss and
  /// equal batch sizes one update equals that of a batch `batches` times
  /// larger. update_start runs only before an update; global_step counts
  /// updates. The last group of an epoch may be shorter.
  TrainingLoop& accumulate_gradients(int64_t batches);
  /// Training batches per optimizer update (see `accumulate_gradients`).
  int64_t gradient_accumulation() const { return accumulation_; }
  /// Appends a callback after those given to the constructor (and before
  /// any of a higher `order()`).
  TrainingLoop& add_callback(std::shared_ptr<Callback> callback);
  /// Whether `fit` handles SIGINT and SIGTERM (default true): the first
  /// signal lets the current batch finish (a running validation pass, too),
  /// then the fit stops as after `CancelFit`, end events and fit_end run so
  /// logs are flushed and a checkpoint callback saves, and `fit` returns
  /// `FitStatus::interrupted`. A second signal ends the process at once.
  /// The previous handlers are back when `fit` returns.
  TrainingLoop& handle_signals(bool on);
  /// Makes `fit` and `evaluate` data-parallel over `group` (from
  /// `distributed::init`; null, the default: one process), as PyTorch's
  /// DistributedDataParallel with a DistributedSampler. At each fit's start
  /// (after a resume's restore) rank 0's parameters and buffers are
  /// broadcast to every rank. Each rank trains on its shard of every epoch
  /// (`BatchSource::shard`: training padded to equal length, validation and
  /// evaluation not, so every example counts once). After backward the
  /// gradients are averaged across ranks in buckets that are all-reduced
  /// while backward goes on (see `DataParallelOptions`) — with
  /// `accumulate_gradients(n)` only before each update — so update_start sees
  /// the averaged gradients and every rank makes the same update: with a
  /// mean loss, that of one process on the union of the ranks' batches.
  /// Metrics are combined (`Metric::all_reduce`) at the end of each phase,
  /// so epoch values and the history are the same on every rank. Callbacks
  /// that write (`Callback::rank_zero_only`) run on rank 0 alone;
  /// checkpoints are written by rank 0 while the others wait, and a resume
  /// needs the world size that wrote it. A SIGINT or SIGTERM on any rank
  /// stops every rank at the same update. Callbacks that cancel or stop must
  /// decide alike on every rank (from epoch metrics, as early stopping
  /// does); a rank that stops alone makes the others fail with `Error`
  /// within the group's timeout. `predict` is not sharded.
  TrainingLoop& data_parallel(std::shared_ptr<distributed::ProcessGroup> group,
                              distributed::DataParallelOptions options = {});
  /// The group given to `data_parallel`, or null.
  const std::shared_ptr<distributed::ProcessGroup>& process_group() const { return group_; }

 private:
  void emit(Event event);
  /// Emits `start`, runs `body`, emits `end`; swallows cancels up to
  /// `cancel_level` (0 none, 1 batch, 2 epoch, 3 fit) and emits `end` before
  /// letting a wider cancel through, so every start has its end.
  template <class Body>
  void phase(Event start, Event end, int cancel_level, Body&& body);
  /// The same, running `finish` before `end` unless a wider cancel passes.
  template <class Body, class Finish>
  void phase(Event start, Event end, int cancel_level, Body&& body, Finish&& finish);
  void record_history();
  void begin_run(const Model& model, torch::Device device);
  bool data_parallel_run() const { return group_ != nullptr && group_->world_size() > 1; }
  void shard(const data::DataSource& source, bool pad);
  void unshard(const data::DataSource& source);
  void start_data_parallel_fit(bool resumed);
  void sort_callbacks();
  void poll_interrupt();
  void poll_interrupt_at_epoch_end();
  void run_epoch();
  void run_pass(data::BatchSource& source, Phase phase);
  void run_batch(const data::Batch& batch);
  void run_step();
  std::vector<OutputLock> lock_outputs() const;
  /// Runs `work`; rethrows what it throws as `Error` naming the phase,
  /// position, batch shapes and `what` failed (LibTorch's first line only).
  template <class Work>
  void explain_failure(const std::string& what, Work&& work);

  data::DataSource training_;
  data::DataSource validation_;
  torch::optim::Optimizer& optimizer_;
  LossFunction loss_;
  std::vector<std::shared_ptr<Callback>> callbacks_;
  // Empty: the default step, loss(model(inputs), targets).
  Step step_;
  // Whether the next default step checks class targets against the outputs.
  bool check_targets_ = false;
  int64_t accumulation_ = 1;
  bool handle_signals_ = true;
  // The first training batch of the next training pass (a resumed fit's).
  int64_t resume_batch_ = 0;
  LoopState state_;
  std::optional<Model> model_;
  std::vector<torch::Tensor> predictions_;
  std::shared_ptr<distributed::ProcessGroup> group_;
  distributed::DataParallelOptions parallel_options_;
  // Averages gradients during a data-parallel fit; null otherwise.
  std::shared_ptr<detail::GradientReducer> reducer_;
  // The signal the ranks agreed on at the last gradient reduction, or 0.
  int agreed_signal_ = 0;
  // Sources last sharded across the group, to be made whole again after a
  // data_parallel(nullptr).
  std::vector<data::DataSource> sharded_;
};

}  // namespace trainloop
