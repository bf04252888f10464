#pragma once

#include <torch/arg.h>
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/model.h"

namespace trainloop {

class TrainingLoop;

/// Settings for the learning-rate finder.
/// Example: `LrFinderOptions().end_lr(1).step_count(200).svg_path("run/lr_find.svg")`
struct LrFinderOptions {
  LrFinderOptions() = default;
  /// First learning rate of the sweep.
  TORCH_ARG(double, start_lr) = 1e-7;
  /// Last learning rate of the sweep (reached at step `step_count`).
  TORCH_ARG(double, end_lr) = 10;
  /// Training steps (optimizer updates) of the sweep; the rate grows
  /// exponentially from `start_lr` to `end_lr` over them. At least 2.
  TORCH_ARG(int64_t, step_count) = 100;
  /// Weight of the running average in the exponential smoothing of the loss,
  /// with bias correction as in fastai: in [0, 1).
  TORCH_ARG(double, smoothing) = 0.98;
  /// The sweep stops once the smoothed loss exceeds this many times the best
  /// smoothed loss so far (or is NaN).
  TORCH_ARG(double, divergence_factor) = 4;
  /// Device of the sweep; by default the device of the model's parameters.
  TORCH_ARG(std::optional<torch::Device>, device) = std::nullopt;
  /// When not empty, the loss-vs-rate plot is written there as SVG.
  TORCH_ARG(std::string, svg_path) = "";
};

/// What the sweep found.
struct LrFinderResult {
  /// Learning rate of each step taken.
  std::vector<double> rates;
  /// The loss of each step, as computed, and exponentially smoothed.
  std::vector<double> losses;
  std::vector<double> smoothed_losses;
  /// True when the sweep stopped early because the loss diverged.
  bool diverged = false;
  /// The rate where the smoothed loss falls fastest against log(rate),
  /// leaving out the first tenth and the last 5 steps as fastai does.
  double suggested_steepest = 0;
  /// The rate of the smallest smoothed loss, divided by 10.
  double suggested_min_div10 = 0;
};

/// fastai's learning-rate range test (Smith 2015, "Cyclical learning rates"):
/// trains `model` on `loop.training_data()` with `loop.loss_function()` and
/// `loop.optimizer()` for up to `step_count` steps (as many epochs as that
/// takes) while raising the learning rate exponentially from `start_lr` to
/// `end_lr`, recording the loss of each step, and stops early when the loss
/// diverges. The model's parameters, buffers, gradients and training mode and
/// the optimizer's state and learning rates are restored exactly afterwards,
/// also when the sweep throws. The loop's callbacks, metrics and custom step
/// are not used. Reads the loss every step (a device sync per step).
/// Example:
///   auto found = lr_find(loop, model, LrFinderOptions().svg_path("lr.svg"));
///   optimizer_lr = found.suggested_steepest;
TRAINLOOP_API LrFinderResult lr_find(TrainingLoop& loop, Model model, LrFinderOptions options = {});

}  // namespace trainloop
