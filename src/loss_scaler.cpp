#include "trainloop/loss_scaler.h"

#include <fmt/format.h>
#include <torch/version.h>

#include <cmath>
#include <vector>

#include "trainloop/error.h"

namespace trainloop {

namespace {

// ATen's fused kernels: CUDA's since 1.6, the CPU's since 2.3 (PyTorch
// #109281). Where they are missing the same arithmetic runs as plain
// operations, with the same results.
bool has_amp_kernels(const torch::Device& device) {
  if (device.is_cuda()) return true;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  return device.is_cpu();
#else
  return false;
#endif
}

std::vector<torch::Tensor> gradients(torch::optim::Optimizer& optimizer) {
  std::vector<torch::Tensor> grads;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) {
      if (parameter.grad().defined()) grads.push_back(parameter.grad());
    }
  }
  return grads;
}

}  // namespace

LossScaler::LossScaler(LossScalerOptions options) : options_(options) {
  if (!(options_.init_scale() > 0) || !std::isfinite(options_.init_scale())) {
    throw Error(fmt::format("LossScaler: init_scale is {}, expected a finite value > 0",
                            options_.init_scale()));
  }
  if (!(options_.growth_factor() > 1) || !std::isfinite(options_.growth_factor())) {
    throw Error(fmt::format("LossScaler: growth_factor is {}, expected a finite value > 1",
                            options_.growth_factor()));
  }
  if (!(options_.backoff_factor() > 0 && options_.backoff_factor() < 1)) {
    throw Error(fmt::format("LossScaler: backoff_factor is {}, expected a value in (0, 1)",
                            options_.backoff_factor()));
  }
  if (options_.growth_interval() < 1) {
    throw Error(fmt::format("LossScaler: growth_interval is {}, expected >= 1",
                            options_.growth_interval()));
  }
  scale_ = torch::full({1}, options_.init_scale(), torch::kFloat);
  growth_tracker_ = torch::zeros({1}, torch::kInt);
}

void LossScaler::ensure_on(const torch::Device& device) {
  if (scale_.device() == device) return;
  scale_ = scale_.to(device);
  growth_tracker_ = growth_tracker_.to(device);
  if (found_inf_.defined()) found_inf_ = found_inf_.to(device);
}

torch::Tensor LossScaler::scale(const torch::Tensor& loss) {
  if (!loss.defined()) throw Error("LossScaler::scale: the loss is undefined");
  ensure_on(loss.device());
  // The scale is [1]; a 0-d loss stays 0-d.
  return loss * scale_.reshape({});
}

void LossScaler::unscale_(torch::optim::Optimizer& optimizer) {
  if (found_inf_.defined()) {
    throw Error("LossScaler::unscale_: already called since the last update(); unscale once "
                "per update");
  }
  std::vector<torch::Tensor> grads = gradients(optimizer);
  const torch::Device device = grads.empty() ? scale_.device() : grads.front().device();
  ensure_on(device);
  torch::NoGradGuard no_grad;
  // In float64 first, as GradScaler does, so 1/scale rounds once.
  const torch::Tensor inverse = scale_.to(torch::kDouble).reciprocal().to(torch::kFloat);
  found_inf_ = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(device));
  if (grads.empty()) return;
  for (const auto& grad : grads) {
    if (grad.is_sparse()) {
      throw Error("LossScaler::unscale_: a parameter has a sparse gradient, which loss scaling "
                  "does not handle");
    }
  }
  if (has_amp_kernels(device)) {
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, inverse);
    return;
  }
  std::vector<torch::Tensor> bad;
  bad.reserve(grads.size());
  for (auto& grad : grads) {
    bad.push_back(torch::logical_not(torch::isfinite(grad)).any().reshape({1}));
    // Multiplied in float32, as the kernel does, whatever the gradient's type.
    if (grad.scalar_type() == torch::kFloat) {
      grad.mul_(inverse);
    } else {
      grad.copy_(grad.to(torch::kFloat).mul_(inverse));
    }
  }
  found_inf_ = torch::cat(bad).any().to(torch::kFloat).reshape({1});
}

bool LossScaler::found_inf() const {
  return found_inf_.defined() && found_inf_.item<float>() != 0;
}

bool LossScaler::step(torch::optim::Optimizer& optimizer) {
  if (!found_inf_.defined()) unscale_(optimizer);
  if (found_inf()) return false;
  optimizer.step();
  return true;
}

void LossScaler::update() {
  if (!found_inf_.defined()) {
    throw Error("LossScaler::update: no unscale_ (or step) since the last update");
  }
  torch::NoGradGuard no_grad;
  if (has_amp_kernels(scale_.device())) {
    at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, options_.growth_factor(),
                           options_.backoff_factor(), options_.growth_interval());
  } else {
    // _amp_update_scale_'s rule: back off and restart the count after an
    // inf or nan; after growth_interval clean updates grow (unless growing
    // overflows) and restart the count; else count.
    const torch::Tensor found = found_inf_ > 0;
    const torch::Tensor counted = growth_tracker_ + 1;
    const torch::Tensor grows = torch::logical_and(torch::logical_not(found),
                                                   counted >= options_.growth_interval());
    const torch::Tensor grown = scale_ * options_.growth_factor();
    const torch::Tensor kept = torch::where(torch::logical_and(grows, torch::isfinite(grown)),
                                            grown, scale_);
    scale_.copy_(torch::where(found, scale_ * options_.backoff_factor(), kept));
    growth_tracker_.copy_(
        torch::where(torch::logical_or(found, grows), torch::zeros_like(counted), counted));
  }
  found_inf_ = torch::Tensor();
}

void LossScaler::update(bool found_inf) {
  if (!found_inf_.defined()) {
    throw Error("LossScaler::update: no unscale_ (or step) since the last update");
  }
  found_inf_.fill_(found_inf ? 1.0 : 0.0);
  update();
}

double LossScaler::scale_value() const { return scale_.item<double>(); }

int64_t LossScaler::growth_tracker() const { return growth_tracker_.item<int64_t>(); }

void LossScaler::save(torch::serialize::OutputArchive& archive) const {
  archive.write("scale", scale_.cpu());
  archive.write("growth_tracker", growth_tracker_.cpu());
}

void LossScaler::load(torch::serialize::InputArchive& archive) {
  torch::Tensor scale;
  torch::Tensor tracker;
  archive.read("scale", scale);
  archive.read("growth_tracker", tracker);
  if (scale.numel() != 1 || scale.scalar_type() != torch::kFloat || tracker.numel() != 1 ||
      tracker.scalar_type() != torch::kInt) {
    throw Error("LossScaler::load: expected a float32 scale and an int32 growth tracker of one "
                "element each");
  }
  const torch::Device device = scale_.device();
  scale_ = scale.reshape({1}).to(device).clone();
  growth_tracker_ = tracker.reshape({1}).to(device).clone();
  found_inf_ = torch::Tensor();
}

}  // namespace trainloop
