#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>

#include "trainloop/callback.h"
#include "trainloop/callbacks/monitor.h"
#include "trainloop/export.h"

namespace trainloop::callbacks {

/// Settings for early stopping.
/// Example: `EarlyStoppingOptions("val_loss").patience(3).restore_best(true)`
struct EarlyStoppingOptions {
  /* implicit */ EarlyStoppingOptions(std::string monitor) : monitor_(std::move(monitor)) {}
  /// Metric name, as in the CSV header ("val_loss", "accuracy", …).
  TORCH_ARG(std::string, monitor);
  /// Whether a smaller (`min`, default) or larger (`max`) value is better.
  TORCH_ARG(Mode, mode) = Mode::min;
  /// Epochs without improvement before the fit stops (default 5, >= 0).
  TORCH_ARG(int64_t, patience) = 5;
  /// Least change that counts as an improvement, in the metric's units
  /// (default 0, >= 0): `value < best - min_delta` in `min` mode,
  /// `value > best + min_delta` in `max` mode, as Keras.
  TORCH_ARG(double, min_delta) = 0.0;
  /// Whether to copy the parameters and buffers of the best epoch back into
  /// the model when the fit ends, however it ends (default false). Keeps one
  /// copy of them on the model's device.
  TORCH_ARG(bool, restore_best) = false;
};

/// Stops the fit (as `CancelFit`; fit_end still runs) once the monitored
/// metric has not improved for `patience` epochs, checked at each epoch_end.
/// A NaN value (the metric was not computed, e.g. "val_loss" without
/// validation data, or training diverged) is an `Error` naming the monitor.
/// The counters (best value, epochs waited, best epoch) and, with
/// `restore_best`, the best weights are saved under the key "early_stopping";
/// they start afresh after each fit ends.
TRAINLOOP_API std::shared_ptr<Callback> early_stopping(EarlyStoppingOptions options);

}  // namespace trainloop::callbacks
