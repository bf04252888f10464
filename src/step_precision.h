#pragma once

// How a step's arithmetic is done: full precision in this base, mixed
// precision (autocast around the step, the loss scaled for backward, the
// gradients unscaled before update_start, an update skipped on overflow) in
// the subclass `make_step_precision` returns for other options. The batch
// path calls these same points either way. Private to the library.

#include <torch/torch.h>

#include <functional>
#include <memory>

#include "trainloop/precision.h"

namespace trainloop::detail {

class Precision {
 public:
  virtual ~Precision() = default;
  /// At the start of each fit, evaluate and predict: throws `Error` when
  /// steps cannot compute this way on `device`.
  virtual void start(const torch::Device& /*device*/) {}
  /// Runs `step` (forward and loss).
  virtual void forward(const std::function<void()>& step) { step(); }
  /// Backward of `loss`.
  virtual void backward(const torch::Tensor& loss) { loss.backward(); }
  /// After the gradients are complete (over every process), before
  /// update_start: leaves the true gradients in `.grad` and returns whether
  /// one holds an inf or nan that must skip the update. Only a loss scaler
  /// skips, so only it reads the device here.
  virtual bool unscale(torch::optim::Optimizer& /*optimizer*/) { return false; }
  /// The optimizer's update, none when `skip` (`unscale`'s answer combined
  /// over every process).
  virtual void update(torch::optim::Optimizer& optimizer, bool skip) {
    if (!skip) optimizer.step();
  }
  /// The loss scaler, null when none runs (then `unscale` never asks for a
  /// skip).
  virtual const LossScaler* scaler() const { return nullptr; }
  /// What a checkpoint keeps (the loss scaler's state).
  virtual void save(torch::serialize::OutputArchive& /*archive*/) const {}
  virtual void load(torch::serialize::InputArchive& /*archive*/) {}
};

/// Full precision for float32, mixed precision otherwise.
std::shared_ptr<Precision> make_step_precision(const MixedPrecisionOptions& options);

}  // namespace trainloop::detail
