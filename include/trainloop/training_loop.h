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
#include "trainloop/checkpoint.h"
#include "trainloop/data/epochs.h"
#include "trainloop/distributed.h"
#include "trainloop/event.h"
#include "trainloop/loop_state.h"
#include "trainloop/losses.h"
#include "trainloop/metrics.h"
#include "trainloop/model.h"
#include "trainloop/output_lock.h"
#include "trainloop/precision.h"

namespace trainloop {

namespace detail {
class Coordinator;
class Precision;
struct LoadedCheckpoint;
}  // namespace detail

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
  /// How steps compute, in fit, evaluate and predict alike (default
  /// float32). For bfloat16 or float16 the step (forward and loss, the
  /// custom `step` too) runs under autocast (`AutocastGuard`): eligible
  /// operations such as matrix products and convolutions compute in the
  /// lower precision, the rest in float32, the weights stay float32 and
  /// backward runs outside. Outputs reach metrics and `predict` as float32.
  /// With loss scaling (float16's default) the loss is scaled before
  /// backward and the gradients are unscaled before update_start, so
  /// gradient clipping and `terminate_on_nan` see true gradients; an update
  /// whose gradients hold an inf or nan is skipped (`LoopState::
  /// update_skipped`; in a data-parallel fit on every rank), does not count
  /// in `global_step`, and backs the scale off. The scaler's state is in
  /// checkpoints. Reads one bool from the device per update with loss
  /// scaling, nothing otherwise. `fit` throws `Error` when this LibTorch
  /// cannot autocast to the dtype on the device (`autocast_supported`).
  TrainingLoop& mixed_precision(MixedPrecisionOptions options);
  /// The loss scaler of `mixed_precision`, null when none runs (e.g. to read
  /// `scale_value()`).
  const LossScaler* loss_scaler() const;
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
  const std::shared_ptr<distributed::ProcessGroup>& process_group() const;

  /// Writes everything this fit needs to continue exactly into the
  /// checkpoint directory `path`: `model.pt` (parameters and buffers as a
  /// state dict that Python's `torch.load` reads), `optimizer.pt`, `state.pt`
  /// (random generators, running metrics, every callback's `save`) and
  /// `manifest.json` (format, position, history, and each file's size and
  /// CRC-32), atomically: a run killed at any moment leaves either the old
  /// checkpoint or the new one. `resume` is where a fit resumed from it
  /// continues. Call it during a fit, between batches (a callback does).
  /// Throws `Error` naming the file that could not be written. In a
  /// data-parallel fit every rank calls it at the same point: each rank's
  /// generators and running metrics are gathered into `state.pt`, rank 0
  /// alone writes, and no rank returns before the checkpoint is in place
  /// (each throws `Error` if rank 0 failed).
  void save_checkpoint(const std::string& path, ResumePoint resume, const CheckpointNote& note = {});
  /// Throws `Error` unless `save_checkpoint` can save this loop: each
  /// callback whose `save` writes anything has its own state key
  /// and, when checkpoints may be taken inside epochs (`inside_epochs`),
  /// every training metric can save its running value. For a checkpoint
  /// callback to call at fit_start, before hours of training.
  void check_checkpointable(bool inside_epochs) const;

 private:
  void emit(Event event);
  /// Emits `start`, runs `body`, then `finish`, and emits `end`; absorbs a
  /// cancel of `absorbs`' scope or narrower (none: nothing) and emits `end`
  /// before letting a wider one through, so every start has its end.
  template <class Body, class Finish>
  void between(Event start, Event end, std::optional<CancelScope> absorbs, Body&& body,
               Finish&& finish);
  void begin_run(const Model& model, torch::Device device);
  void sort_callbacks();
  int local_signal() const;
  void run_epoch();
  void run_pass(data::BatchSource& source, Phase phase);
  void run_batch(const data::Batch& batch);
  void run_step();
  void update_metrics();
  void backward_and_update();
  /// Runs `work`; rethrows what it throws as `Error` naming the phase,
  /// position, batch shapes and `what` failed (LibTorch's first line only).
  template <class Work>
  void explain_failure(const std::string& what, Work&& work);
  /// Restores the model, optimizer, running metrics, position and history
  /// from `checkpoint`, and returns the first training batch to run.
  int64_t restore_position(const detail::LoadedCheckpoint& checkpoint);
  /// Restores every callback's state (after fit_start), then the random
  /// generators, last, so nothing draws from them before training goes on.
  void restore_callbacks(const detail::LoadedCheckpoint& checkpoint);
  /// What differs between the ranks, generators and running metrics, into
  /// `state`.
  void write_rank_state(torch::serialize::OutputArchive& state) const;

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
  // How this process works with others (alone by default), and how a step
  // computes: shared, so the loop stays copyable as before.
  std::shared_ptr<detail::Coordinator> coordinator_;
  std::shared_ptr<detail::Precision> precision_;
};

/// `loop.save_checkpoint(path, resume, note)` (see
/// `TrainingLoop::save_checkpoint`).
inline void save_checkpoint(TrainingLoop& loop, const std::string& path, ResumePoint resume,
                            const CheckpointNote& note = {}) {
  loop.save_checkpoint(path, resume, note);
}

}  // namespace trainloop
