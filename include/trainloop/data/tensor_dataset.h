#pragma once

#include <torch/torch.h>

#include "trainloop/export.h"

namespace trainloop::data {

/// An in-memory dataset: example i is `inputs[i]` with `targets[i]`.
/// `targets` may be undefined for prediction-only data.
struct TRAINLOOP_API TensorDataset {
  TensorDataset() = default;
  /// Checks that both tensors hold the same number of examples.
  TensorDataset(torch::Tensor inputs, torch::Tensor targets);

  torch::Tensor inputs;
  torch::Tensor targets;

  /// Number of examples.
  int64_t size() const { return inputs.defined() ? inputs.size(0) : 0; }
};

}  // namespace trainloop::data
