#pragma once

#include <torch/torch.h>

namespace trainloop::data {

/// One batch: inputs and targets with the examples along dimension 0.
/// `targets` may be undefined for prediction-only data.
struct Batch {
  torch::Tensor inputs;
  torch::Tensor targets;
};

}  // namespace trainloop::data
