#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>

#include "trainloop/callback.h"
#include "trainloop/callbacks/monitor.h"
#include "trainloop/export.h"

namespace trainloop::callbacks {

/// How `ReduceLrOnPlateauOptions::threshold` measures a significant change:
/// relative to the best value (`rel`) or in the metric's units (`abs`).
enum class ThresholdMode { rel, abs };

/// Settings for reducing the learning rate on a plateau; the same fields,
/// defaults and meaning as PyTorch's `torch.optim.lr_scheduler.ReduceLROnPlateau`.
/// Example: `ReduceLrOnPlateauOptions("val_loss").factor(0.5).patience(2)`
struct ReduceLrOnPlateauOptions {
  /* implicit */ ReduceLrOnPlateauOptions(std::string monitor) : monitor_(std::move(monitor)) {}
  /// Metric name, as in the CSV header ("val_loss", "accuracy", …).
  TORCH_ARG(std::string, monitor);
  /// Whether a smaller (`min`, default) or larger (`max`) value is better.
  TORCH_ARG(Mode, mode) = Mode::min;
  /// New rate = old rate × factor (default 0.1, in [0, 1)).
  TORCH_ARG(double, factor) = 0.1;
  /// Epochs without improvement that are tolerated; the rate drops after
  /// `patience + 1` bad epochs in a row (default 10, >= 0).
  TORCH_ARG(int64_t, patience) = 10;
  /// Least change that counts as an improvement (default 1e-4): better means
  /// `value < best × (1 − threshold)` (`min`, `rel`), `value < best − threshold`
  /// (`min`, `abs`), and the mirror images in `max` mode.
  TORCH_ARG(double, threshold) = 1e-4;
  /// Relative (default) or absolute threshold.
  TORCH_ARG(ThresholdMode, threshold_mode) = ThresholdMode::rel;
  /// Epochs after a reduction during which bad epochs are not counted (default 0).
  TORCH_ARG(int64_t, cooldown) = 0;
  /// Lower bound of every parameter group's rate (default 0).
  TORCH_ARG(double, min_lr) = 0.0;
  /// A reduction smaller than this is skipped (default 1e-8).
  TORCH_ARG(double, eps) = 1e-8;
};

/// Multiplies every parameter group's learning rate by `factor` when the
/// monitored metric stops improving, stepped once per epoch at epoch_end,
/// exactly as PyTorch's `ReduceLROnPlateau.step(value)`. A NaN value (the
/// metric was not computed, or training diverged) is an `Error` naming the
/// monitor. Its counters are saved under the key "reduce_lr_on_plateau" and
/// start afresh after each fit ends; the reduced rate stays in the optimizer.
TRAINLOOP_API std::shared_ptr<Callback> reduce_lr_on_plateau(ReduceLrOnPlateauOptions options);

}  // namespace trainloop::callbacks
