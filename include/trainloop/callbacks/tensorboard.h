#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "trainloop/export.h"
#include "trainloop/callback.h"

namespace trainloop::callbacks {

/// Settings for the TensorBoard logger.
/// Example: `TensorBoardOptions().log_dir("runs").log_every_n_steps(50).histograms(true)`
struct TensorBoardOptions {
  TensorBoardOptions() = default;
  /// Directory that holds one sub-directory per run; point `tensorboard --logdir` here.
  TORCH_ARG(std::string, log_dir) = "run/tensorboard/stats";
  /// Name of this run's sub-directory. Empty (the default): the local time
  /// at fit_start, e.g. "2026-11-23T12-30-05" (with "-2", "-3", … appended if
  /// that directory exists), so every fit is a new run. A given name is
  /// reused by every fit, whose files then add to the same run.
  TORCH_ARG(std::string, run_name) = "";
  /// Training scalars are written every this many optimizer steps (each is a
  /// device sync), and at the last batch of each epoch. At least 1.
  TORCH_ARG(int64_t, log_every_n_steps) = 10;
  /// Writes a histogram of every parameter ("parameters/<name>") and of its
  /// gradient ("gradients/<name>") at each epoch end.
  TORCH_ARG(bool, histograms) = false;
  /// Text written once at fit_start under the tag "config" in the training
  /// run (TensorBoard renders it as Markdown), e.g. the hyperparameters.
  TORCH_ARG(std::optional<std::string>, config_text) = std::nullopt;
  /// Seconds between flushes at epoch ends, as `CsvLoggerOptions::flush_seconds`:
  /// the first epoch end flushes, later ones once this much time has passed
  /// (else the first batch end after that); 0: every epoch end. Default 1.
  TORCH_ARG(double, flush_seconds) = 1.0;
};

/// Logs the fit as TensorBoard event files:
///   <log_dir>/<run_name>/train/events.out.tfevents.…       training metrics, "learning_rate"
///   <log_dir>/<run_name>/validation/events.out.tfevents.…  validation metrics, once per epoch
/// TensorBoard shows the two as runs "<run_name>/train" and
/// "<run_name>/validation", and since both use the metrics' plain names
/// ("loss", "accuracy", …) their curves overlay on one chart. The step is
/// the number of optimizer updates (`state.global_step`). Training values
/// are the running averages since the epoch began. Files are flushed at epoch
/// ends (at most once per `flush_seconds`, and at checkpoints) and closed at fit_end, also after a cancel or an error.
TRAINLOOP_API std::shared_ptr<Callback> tensorboard(TensorBoardOptions options = {});

}  // namespace trainloop::callbacks
