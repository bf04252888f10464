#include "trainloop/callbacks/gradient_clipping.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kClippingKey = "gradient_clipping";

class GradientClipping : public Callback {
 public:
  explicit GradientClipping(GradientClippingOptions options) : options_(std::move(options)) {
    const auto& max_norm = options_.max_norm();
    const auto& clip_value = options_.clip_value();
    if (max_norm.has_value() == clip_value.has_value()) {
      throw Error(fmt::format("{}: {}; expected exactly one of max_norm and clip_value", kClippingKey,
                              max_norm ? "both max_norm and clip_value are set"
                                       : "neither max_norm nor clip_value is set"));
    }
    if (max_norm && !(*max_norm > 0)) {
      throw Error(fmt::format("{}: max_norm is {}, expected > 0", kClippingKey, *max_norm));
    }
    if (clip_value && !(*clip_value > 0)) {
      throw Error(fmt::format("{}: clip_value is {}, expected > 0", kClippingKey, *clip_value));
    }
    if (!(options_.norm_type() >= 0)) {
      throw Error(fmt::format("{}: norm_type is {}, expected >= 0 or infinity", kClippingKey,
                              options_.norm_type()));
    }
  }

  std::string state_key() const override { return kClippingKey; }

  void on_event(Event event, TrainingLoop& loop) override {
    // A skipped update's gradients are discarded: nothing to clip.
    if (event != Event::update_start || loop.state().update_skipped) return;
    std::vector<torch::Tensor> grads;
    for (const auto& parameter : loop.model().parameters()) {
      if (parameter.grad().defined()) grads.push_back(parameter.grad());
    }
    if (grads.empty()) return;
    torch::NoGradGuard no_grad;
    if (options_.clip_value()) {
      const double limit = *options_.clip_value();
      for (auto& grad : grads) grad.clamp_(-limit, limit);
      return;
    }
    clip_norm(grads);
  }

 private:
  // The same arithmetic as torch::nn::utils::clip_grad_norm_, minus its final
  // read of the norm: the scale stays a device tensor, so the host never waits.
  void clip_norm(std::vector<torch::Tensor>& grads) const {
    const double norm_type = options_.norm_type();
    const torch::Device device = grads.front().device();
    torch::Tensor total;
    if (norm_type == 0) {
      total = torch::full({}, static_cast<double>(grads.size()),
                          torch::TensorOptions().dtype(torch::kFloat).device(device));
    } else {
      std::vector<torch::Tensor> norms;
      norms.reserve(grads.size());
      const bool infinity = std::isinf(norm_type);
      for (const auto& grad : grads) {
        // Moved to one device so a model split across devices can be stacked.
        norms.push_back((infinity ? grad.abs().max() : grad.norm(norm_type)).to(device));
      }
      if (norms.size() == 1) {
        total = norms.front();
      } else {
        const torch::Tensor stacked = torch::stack(norms);
        total = infinity ? stacked.max() : stacked.norm(norm_type);
      }
    }
    const torch::Tensor scale = (*options_.max_norm() / (total + 1e-6)).clamp_max(1.0);
    for (auto& grad : grads) grad.mul_(scale.to(grad.device()));
  }

  GradientClippingOptions options_;
};

}  // namespace

std::shared_ptr<Callback> gradient_clipping(GradientClippingOptions options) {
  return std::make_shared<GradientClipping>(std::move(options));
}

}  // namespace trainloop::callbacks
