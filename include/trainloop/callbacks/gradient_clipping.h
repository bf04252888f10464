#pragma once

#include <torch/arg.h>

#include <limits>
#include <memory>
#include <optional>

#include "trainloop/export.h"
#include "trainloop/callback.h"

namespace trainloop::callbacks {

/// Settings for gradient clipping: set exactly one of `max_norm` and `clip_value`.
/// Example: `GradientClippingOptions().max_norm(1.0)` or
/// `GradientClippingOptions().clip_value(0.5)`
struct GradientClippingOptions {
  GradientClippingOptions() = default;
  /// Clip by global norm: scale all gradients together so that the norm of
  /// the vector of every gradient element is at most `max_norm` (> 0), as
  /// `torch::nn::utils::clip_grad_norm_`.
  TORCH_ARG(std::optional<double>, max_norm) = std::nullopt;
  /// Order of the norm for `max_norm`: any p >= 0, or infinity for the
  /// largest absolute element (default 2).
  TORCH_ARG(double, norm_type) = 2.0;
  /// Clip by value: clamp every gradient element into [-clip_value,
  /// clip_value] (> 0), as `torch::nn::utils::clip_grad_value_`.
  TORCH_ARG(std::optional<double>, clip_value) = std::nullopt;
};

/// Clips the model's gradients at update_start (after backward, before
/// `optimizer.step()`). The global norm is computed and applied as a tensor
/// on the gradients' device, so clipping never waits for the device
/// (LibTorch's `clip_grad_norm_` reads the norm back every step).
/// State key "gradient_clipping".
TRAINLOOP_API std::shared_ptr<Callback> gradient_clipping(GradientClippingOptions options);

}  // namespace trainloop::callbacks
