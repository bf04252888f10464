#pragma once

#include <torch/arg.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainloop/callback.h"
#include "trainloop/callbacks/monitor.h"
#include "trainloop/checkpoint.h"
#include "trainloop/export.h"

namespace trainloop::callbacks {

/// Settings for `checkpoint`: the directory, and the triggers (a checkpoint
/// is written when any enabled one is due).
/// Example: `CheckpointOptions("run/checkpoints").every_n_steps(500).keep_last(2).monitor("val_loss")`
struct CheckpointOptions {
  CheckpointOptions() = default;
  /// Checkpoints go into `directory`, one sub-directory each.
  /* implicit */ CheckpointOptions(std::string directory) : directory_(std::move(directory)) {}
  /* implicit */ CheckpointOptions(const char* directory) : directory_(directory) {}
  /// The directory the checkpoints go into (required).
  TORCH_ARG(std::string, directory);
  /// At every n-th epoch end (default 1; 0: not at epoch ends).
  TORCH_ARG(int64_t, every_n_epochs) = 1;
  /// After every n-th optimizer update (default 0: off).
  TORCH_ARG(int64_t, every_n_steps) = 0;
  /// After the first update once this many minutes have passed since the
  /// last checkpoint (or the fit's start) (default 0: off).
  TORCH_ARG(double, every_n_minutes) = 0;
  /// How many of the newest checkpoints to keep (default 3; 0: all). The
  /// best one (see `monitor`) and the one just written are kept besides
  /// these. Only checkpoints that verify (`verify_checkpoint`, each once per
  /// fit) count; directories that do not are reported once, by count, and
  /// left alone.
  TORCH_ARG(int64_t, keep_last) = 3;
  /// A metric name ("val_loss", "val_accuracy", …): at each epoch end where
  /// it improved, a checkpoint is written even if none is due, and kept as
  /// the best. Empty (default): no best checkpoint.
  TORCH_ARG(std::string, monitor) = "";
  /// Whether smaller (`min`, default) or larger (`max`) values of `monitor` are better.
  TORCH_ARG(Mode, mode) = Mode::min;
  /// Write a checkpoint when SIGINT or SIGTERM stops the fit (default true).
  TORCH_ARG(bool, on_interrupt) = true;
};

/// Writes checkpoints (see `save_checkpoint`) into `directory`, one
/// sub-directory each, named by how far the fit had come:
///   run/checkpoints/epoch0002-batch000000/   after 2 epochs
///   run/checkpoints/epoch0002-batch000150/   150 batches into the third
/// so `fit(model, epochs, device, "run/checkpoints")` resumes from the newest.
/// Inside an epoch it writes only right after an optimizer update. It runs
/// after every other callback (`order()` is `kRunLast`), so what they did at
/// the event (a CSV row, a TensorBoard record) is inside the checkpoint.
/// At fit_start it creates the directory and fails with `Error` naming it
/// when it cannot be written, or when the monitor is unknown. Its own state
/// (the best value and checkpoint) is saved under the key "checkpoint:" and
/// the directory.
/// In a data-parallel fit it runs on every rank, which decide alike (the
/// time trigger by rank 0's clock) and save together: rank 0 writes.
class TRAINLOOP_API CheckpointCallback : public Callback {
 public:
  /// Throws `Error` for an empty directory or a negative trigger.
  explicit CheckpointCallback(CheckpointOptions options);
  void on_event(Event event, TrainingLoop& loop) override;
  /// "checkpoint:" and the directory.
  std::string state_key() const override { return "checkpoint:" + directory_; }
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;
  int order() const override { return kRunLast; }
  std::vector<OutputPath> outputs() const override {
    return {{directory_, OutputKind::directory}};
  }

  /// The directory of the newest checkpoint written, empty before the first.
  const std::string& last_path() const { return last_path_; }
  /// The best checkpoint's directory (with a `monitor`), empty before one.
  const std::string& best_path() const { return best_path_; }
  /// Seconds the newest checkpoint took to write (0 before the first).
  double last_write_seconds() const { return last_write_seconds_; }
  /// Checkpoints written by this callback.
  int64_t write_count() const { return write_count_; }

 private:
  void start(TrainingLoop& loop);
  void prepare_directory();
  void write(TrainingLoop& loop, ResumePoint resume, bool best);
  void prune();

  std::string directory_;
  CheckpointOptions options_;
  std::chrono::steady_clock::time_point last_time_;
  int64_t last_step_seen_ = -1;
  double best_value_ = 0;
  std::string best_path_;
  std::string last_path_;
  double last_write_seconds_ = 0;
  int64_t write_count_ = 0;
  // Checkpoint names verified in this fit: empty when valid, else the problem.
  std::map<std::string, std::string> verified_;
  // Invalid checkpoints already reported, so each count is said once.
  int64_t reported_invalid_ = 0;
};

/// A `CheckpointCallback` writing into `options.directory()`.
/// Example: `callbacks::checkpoint(CheckpointOptions("run/checkpoints").every_n_steps(100))`,
/// or `callbacks::checkpoint("run/checkpoints")` with the default triggers.
TRAINLOOP_API std::shared_ptr<CheckpointCallback> checkpoint(CheckpointOptions options);
/// The same, the directory given apart (the form of earlier versions).
TRAINLOOP_API std::shared_ptr<CheckpointCallback> checkpoint(std::string directory,
                                                             CheckpointOptions options);

}  // namespace trainloop::callbacks
