#pragma once

// A small seeded classification set for tests and test workers: header-only,
// without GoogleTest, so worker executables can use it too.

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

}  // namespace trainloop::testing_support
