#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>

#include "trainloop/export.h"
#include "trainloop/loss_scaler.h"

namespace trainloop {

/// How `TrainingLoop` computes each step (see
/// `TrainingLoop::mixed_precision`).
///
/// Example: `MixedPrecisionOptions(torch::kBFloat16)`, or
/// `MixedPrecisionOptions(torch::kHalf).loss_scaling(LossScalerOptions().init_scale(1024))`.
struct TRAINLOOP_API MixedPrecisionOptions {
  /// `dtype`: `torch::kFloat` (full precision, no autocast),
  /// `torch::kBFloat16` or `torch::kHalf`; anything else is an `Error`.
  /* implicit */ MixedPrecisionOptions(torch::Dtype dtype = torch::kFloat);
  /// Whether a loss scaler runs with these settings.
  bool scales_loss() const;
  /// The lower precision autocast computes eligible operations in.
  TORCH_ARG(torch::Dtype, dtype);
  /// Loss scaling. Unset: on for float16 (whose range is too narrow for
  /// small gradients), off for bfloat16 and float32 (float32's range).
  TORCH_ARG(std::optional<LossScalerOptions>, loss_scaling) = std::nullopt;
};

/// "fp32", "bf16" or "fp16" (or "float32", "bfloat16", "float16") as a
/// dtype for `MixedPrecisionOptions`; `Error` naming `text` and the
/// accepted names otherwise.
TRAINLOOP_API torch::Dtype parse_precision(const std::string& text);
/// "fp32", "bf16" or "fp16".
TRAINLOOP_API std::string precision_name(torch::Dtype dtype);

/// Whether this LibTorch can autocast to `dtype` on `device`: bfloat16 on
/// the CPU and CUDA, float16 on CUDA, and on the CPU from LibTorch 2.4.
/// `torch::kFloat` (no autocast) always.
TRAINLOOP_API bool autocast_supported(torch::DeviceType device, torch::Dtype dtype);

/// Autocast to `dtype` on `device` for this guard's lifetime, as Python's
/// `torch.autocast(device, dtype)`: the previous setting is back when it
/// ends, guards nest, and the outermost one's end clears autocast's cache
/// of cast weights. `torch::kFloat` disables autocast inside. Throws `Error`
/// when `autocast_supported` is false.
class TRAINLOOP_API AutocastGuard {
 public:
  AutocastGuard(torch::DeviceType device, torch::Dtype dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  torch::DeviceType device_;
  bool was_enabled_;
  torch::Dtype previous_dtype_;
};

}  // namespace trainloop
