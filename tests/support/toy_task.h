#pragma once

// A small seeded classification task for tests and test workers, data and
// model: header-only, without GoogleTest, so worker executables use it too.

#include <torch/torch.h>

#include <cstdint>

#include "trainloop/data/tensor_dataset.h"

namespace trainloop::testing_support {

/// `size` rows of `features` standard normal values drawn after
/// manual_seed(seed), and three classes: the count of two sums that are large
/// (the first half of the columns above 0, the second half above 0.5).
inline data::TensorDataset three_class_data(int64_t size, int64_t features, uint64_t seed) {
  torch::manual_seed(seed);
  const torch::Tensor inputs = torch::randn({size, features});
  const int64_t half = features / 2;
  const torch::Tensor targets = (inputs.narrow(1, 0, half).sum(1) > 0).to(torch::kLong) +
                                (inputs.narrow(1, half, features - half).sum(1) > 0.5).to(torch::kLong);
  return {inputs, targets};
}

/// An MLP from 8 inputs to 3 classes through 32 hidden units, with dropout
/// before the output when `dropout` > 0 (so the random generators' state
/// matters to the result); without, nothing random runs in the forward pass.
struct ToyNetImpl : torch::nn::Module {
  explicit ToyNetImpl(double dropout = 0)
      : fc1(register_module("fc1", torch::nn::Linear(8, 32))),
        fc2(register_module("fc2", torch::nn::Linear(32, 3))) {
    if (dropout > 0) this->dropout = register_module("dropout", torch::nn::Dropout(dropout));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::relu(fc1(x));
    if (!dropout.is_empty()) x = dropout(x);
    return fc2(x);
  }
  torch::nn::Linear fc1;
  torch::nn::Linear fc2;
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ToyNet);

}  // namespace trainloop::testing_support
