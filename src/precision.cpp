#include "trainloop/precision.h"

#include <ATen/autocast_mode.h>
#include <fmt/format.h>
#include <torch/version.h>

#include <algorithm>
#include <cctype>

#include "trainloop/error.h"

// LibTorch 2.4 replaced the per-device autocast functions (set_cpu_enabled,
// set_autocast_gpu_dtype, …) by ones that take the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define TRAINLOOP_AUTOCAST_BY_DEVICE 1
#else
#define TRAINLOOP_AUTOCAST_BY_DEVICE 0
#endif

namespace trainloop {

namespace {

bool autocast_enabled(torch::DeviceType device) {
#if TRAINLOOP_AUTOCAST_BY_DEVICE
  return at::autocast::is_autocast_enabled(device);
#else
  return device == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void set_autocast_enabled(torch::DeviceType device, bool enabled) {
#if TRAINLOOP_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_enabled(device, enabled);
#else
  if (device == torch::kCUDA) {
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

torch::Dtype autocast_dtype(torch::DeviceType device) {
#if TRAINLOOP_AUTOCAST_BY_DEVICE
  return at::autocast::get_autocast_dtype(device);
#else
  return device == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype()
                                : at::autocast::get_autocast_cpu_dtype();
#endif
}

void set_autocast_dtype(torch::DeviceType device, torch::Dtype dtype) {
#if TRAINLOOP_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == torch::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

bool is_precision(torch::Dtype dtype) {
  return dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kHalf;
}

}  // namespace

MixedPrecisionOptions::MixedPrecisionOptions(torch::Dtype dtype) : dtype_(dtype) {
  if (!is_precision(dtype)) {
    throw Error(fmt::format("MixedPrecisionOptions: dtype {}, expected torch::kFloat, "
                            "torch::kBFloat16 or torch::kHalf",
                            c10::toString(dtype)));
  }
}

bool MixedPrecisionOptions::scales_loss() const {
  return loss_scaling_.has_value() || dtype_ == torch::kHalf;
}

torch::Dtype parse_precision(const std::string& text) {
  std::string name = text;
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (name == "fp32" || name == "float32") return torch::kFloat;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  if (name == "fp16" || name == "float16") return torch::kHalf;
  throw Error(fmt::format("precision \"{}\": expected fp32, bf16 or fp16", text));
}

std::string precision_name(torch::Dtype dtype) {
  if (dtype == torch::kFloat) return "fp32";
  if (dtype == torch::kBFloat16) return "bf16";
  if (dtype == torch::kHalf) return "fp16";
  throw Error(fmt::format("precision_name: {} is not a training precision", c10::toString(dtype)));
}

bool autocast_supported(torch::DeviceType device, torch::Dtype dtype) {
  if (dtype == torch::kFloat) return true;
  if (device == torch::kCUDA) return dtype == torch::kBFloat16 || dtype == torch::kHalf;
  if (device != torch::kCPU) return false;
  if (dtype == torch::kBFloat16) return true;
  // float16 on the CPU: PyTorch 2.4's CPU autocast policy (before it the
  // CPU's matmul had no float16 kernel).
  return dtype == torch::kHalf && TRAINLOOP_AUTOCAST_BY_DEVICE;
}

AutocastGuard::AutocastGuard(torch::DeviceType device, torch::Dtype dtype)
    : device_(device), was_enabled_(false), previous_dtype_(torch::kFloat) {
  if (!autocast_supported(device, dtype)) {
    throw Error(fmt::format("autocast to {} on {} is not supported by this LibTorch ({}){}",
                            c10::toString(dtype), c10::DeviceTypeName(device), TORCH_VERSION,
                            device == torch::kCPU && dtype == torch::kHalf
                                ? ": float16 on the CPU needs LibTorch 2.4 or newer; use bfloat16"
                                : ""));
  }
  was_enabled_ = autocast_enabled(device);
  previous_dtype_ = autocast_dtype(device);
  set_autocast_enabled(device, dtype != torch::kFloat);
  if (dtype != torch::kFloat) set_autocast_dtype(device, dtype);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  // As torch.autocast's exit: the cast weights are cached only while the
  // outermost region lasts, so they never outlive a step.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(device_, was_enabled_);
  set_autocast_dtype(device_, previous_dtype_);
}

}  // namespace trainloop
