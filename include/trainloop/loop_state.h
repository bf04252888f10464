#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/metrics.h"

namespace trainloop {

/// What the loop is doing: training, validating during a fit, or running
/// `evaluate` or `predict`.
enum class Phase { training, validation, evaluation, prediction };

/// The phase's name, e.g. "validation".
TRAINLOOP_API const char* to_string(Phase phase);

/// Everything callbacks may read and change while the loop runs. The loop
/// reads back `inputs` and `targets` after batch_start, `outputs` and `loss`
/// after inference_prediction_end, so a callback can replace them.
struct TRAINLOOP_API LoopState {
  /// Current epoch, 0-based, and the number of epochs of this fit.
  int64_t epoch = 0;
  int64_t epoch_count = 0;
  /// Current batch within the phase, 0-based, and the phase's batch count.
  int64_t batch = 0;
  int64_t batch_count = 0;
  /// Batches of the current (or last) epoch's training pass.
  int64_t training_batch_count = 0;
  /// Optimizer updates done since the fit started. An update the loss
  /// scaler skips (see `update_skipped`) is not counted.
  int64_t global_step = 0;
  /// Set before update_start: true when this batch's optimizer update is
  /// skipped because the loss scaler (float16 mixed precision, see
  /// `TrainingLoop::mixed_precision`) found an inf or nan gradient. The
  /// update and `global_step` do not advance for it, so neither do schedules,
  /// weight averages or step-based checkpoints; the gradients at update_start
  /// are then not finite, as expected. False otherwise. For callbacks to
  /// read: the loop does not read it back (to skip a batch, throw
  /// `CancelBatch`).
  bool update_skipped = false;
  /// Training, validation, evaluation or prediction.
  Phase phase = Phase::training;
  /// The device the model runs on.
  torch::Device device = torch::kCPU;
  /// This process's rank among the `world_size` processes of a data-parallel
  /// fit (see `TrainingLoop::data_parallel`); 0 and 1 for one process.
  int64_t rank = 0;
  int64_t world_size = 1;

  /// The current batch (on `device`), the model's outputs and the mean loss.
  torch::Tensor inputs;
  torch::Tensor targets;
  torch::Tensor outputs;
  torch::Tensor loss;

  /// Set by a callback to end the fit after the current batch, as `CancelFit`
  /// does, but without unwinding the batch.
  bool stop_requested = false;
  /// Set by the loop while a fit-level stop (`CancelFit`, `stop_requested`
  /// or a signal) unwinds, so end events can tell a phase cut short from a
  /// finished one.
  bool stopping = false;
  /// The signal (SIGINT or SIGTERM) that is ending the fit, 0 if none. Set
  /// at the first batch_end after an optimizer update once the signal came
  /// (or at epoch_end when it came during validation); the fit then stops
  /// with `FitStatus::interrupted`, and `callbacks::checkpoint` saves.
  int interrupt_signal = 0;
  /// The checkpoint this fit resumed from, empty for a fresh fit.
  std::string resumed_from;

  /// Each finished epoch's metric values by log name ("loss", "val_loss",
  /// …), recorded just before epoch_end; kept in checkpoints, so a resumed
  /// fit has the whole history.
  std::vector<std::map<std::string, double>> history;

  /// Metrics of the training phase (the first is always the loss) and their
  /// validation twins; both accumulate since their phase started.
  std::vector<std::shared_ptr<Metric>> training_metrics;
  std::vector<std::shared_ptr<Metric>> validation_metrics;

  /// The loop's optimizer, the one given to the `TrainingLoop`: set by its
  /// constructor, so also before and between fits. Null only in a
  /// `LoopState` that no loop owns (one built by hand, e.g. in a test).
  torch::optim::Optimizer* optimizer = nullptr;

  /// The value of a metric by log name: "loss", "accuracy", "val_loss", …
  /// Reads the device (a sync): call it when a number is needed, not per batch.
  /// NaN when the phase has not run yet. Throws `Error` for an unknown name.
  /// In a data-parallel fit, from a phase's end on (training_end,
  /// validation_end, epoch_end, the history) the values are those over every
  /// process's batches, the same on each; during a phase (batch_end) they are
  /// this process's running values.
  double metric(const std::string& name) const;
  /// All metric names: training ones, then validation ones with "val_".
  std::vector<std::string> metric_names() const;
  /// Every metric's value by log name, as `metric` gives each (what the
  /// history records at each epoch).
  std::map<std::string, double> metric_values() const;
  /// The metrics of the running phase (validation ones while validating).
  const std::vector<std::shared_ptr<Metric>>& phase_metrics() const;

  /// Learning rate of the optimizer's first parameter group.
  double learning_rate() const;
  /// Sets the learning rate of every parameter group.
  void set_learning_rate(double rate);
};

}  // namespace trainloop
