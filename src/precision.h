#pragma once

// How a step's arithmetic is done. Full precision here; mixed precision
// (autocast around the step, the loss scaled for backward, the gradients
// unscaled before update_start, an update skipped on overflow) derives from
// it and overrides these same points, so the batch path does not change.
// Private to the library.

#include <torch/torch.h>

#include <functional>

namespace trainloop::detail {

class Precision {
 public:
  virtual ~Precision() = default;
  /// Runs `step` (forward and loss).
  virtual void forward(const std::function<void()>& step) { step(); }
  /// Backward of `loss`.
  virtual void backward(const torch::Tensor& loss) { loss.backward(); }
  /// After the gradients are complete (over every process), before
  /// update_start: leaves the true gradients in `.grad`.
  virtual void unscale(torch::optim::Optimizer& /*optimizer*/) {}
  /// The optimizer's update.
  virtual void update(torch::optim::Optimizer& optimizer) { optimizer.step(); }
};

}  // namespace trainloop::detail
