#pragma once

#include <torch/torch.h>

#include "trainloop/export.h"

namespace trainloop {

/// Settings of a `LossScaler`, with `torch.amp.GradScaler`'s defaults.
struct LossScalerOptions {
  /// The first scale (> 0).
  TORCH_ARG(double, init_scale) = 65536.0;
  /// What the scale is multiplied by after `growth_interval` updates in a
  /// row without an inf or nan gradient (> 1).
  TORCH_ARG(double, growth_factor) = 2.0;
  /// What the scale is multiplied by after an update with one (in (0, 1)).
  TORCH_ARG(double, backoff_factor) = 0.5;
  /// Clean updates in a row before the scale grows (>= 1).
  TORCH_ARG(int64_t, growth_interval) = 2000;
};

/// Dynamic loss scaling, as Python's `torch.amp.GradScaler`: the loss is
/// multiplied by the scale before backward, so small float16 gradients do
/// not flush to zero; `unscale_` divides the gradients back and notes
/// whether any element is inf or nan; `step` then skips the optimizer's
/// update if one is; `update` halves the scale after such an update and
/// doubles it after `growth_interval` clean ones. The scale and the count of
/// clean updates stay on the gradients' device, updated by ATen's own
/// kernels (`_amp_foreach_non_finite_check_and_unscale_`,
/// `_amp_update_scale_`) where this LibTorch has them for that device and by
/// plain tensor operations where not. `found_inf` and `step` read one bool
/// from the device; nothing else waits for it.
///
/// Example (a hand-written loop):
///   LossScaler scaler;
///   scaler.scale(loss).backward();
///   scaler.unscale_(optimizer);   // optional: to clip true gradients
///   scaler.step(optimizer);
///   scaler.update();
class TRAINLOOP_API LossScaler {
 public:
  /// Throws `Error` naming the option that is out of range.
  explicit LossScaler(LossScalerOptions options = {});

  /// `loss` times the scale (the scale moves to `loss`'s device the first
  /// time).
  torch::Tensor scale(const torch::Tensor& loss);
  /// Divides each gradient of `optimizer`'s parameters by the scale, in
  /// place, and records whether any element of one is inf or nan. At most
  /// once per update: a second call before `update` is an `Error`.
  void unscale_(torch::optim::Optimizer& optimizer);
  /// Whether the gradients unscaled since the last `update` hold an inf or
  /// nan (reads the device). False before `unscale_`.
  bool found_inf() const;
  /// Runs `optimizer.step()` unless the gradients hold an inf or nan
  /// (unscaling them first if `unscale_` was not called); returns whether
  /// it stepped.
  bool step(torch::optim::Optimizer& optimizer);
  /// Ends the update: backs the scale off if an inf or nan was found, grows
  /// it after `growth_interval` clean updates in a row, and readies the
  /// scaler for the next `unscale_`.
  void update();
  /// The same, as if `found_inf` were what `unscale_` found: for a caller
  /// that combined it over several processes. Needs `unscale_` first.
  void update(bool found_inf);

  /// The current scale (reads the device).
  double scale_value() const;
  /// Clean updates in a row since the scale last changed (reads the device).
  int64_t growth_tracker() const;
  const LossScalerOptions& options() const { return options_; }

  /// Writes the scale and the growth tracker (for a checkpoint).
  void save(torch::serialize::OutputArchive& archive) const;
  /// Reads what `save` wrote, onto the device of the scaler's next use.
  void load(torch::serialize::InputArchive& archive);

 private:
  void ensure_on(const torch::Device& device);

  LossScalerOptions options_;
  // float32 [1] and int32 [1], as GradScaler keeps them.
  torch::Tensor scale_;
  torch::Tensor growth_tracker_;
  // float32 [1]: 1 when the gradients unscaled since the last update held
  // an inf or nan. Undefined before unscale_.
  torch::Tensor found_inf_;
};

}  // namespace trainloop
