#include "trainloop/data/tensor_dataset.h"

#include <fmt/format.h>

#include <utility>

#include "trainloop/error.h"

namespace trainloop::data {

TensorDataset::TensorDataset(torch::Tensor input_tensor, torch::Tensor target_tensor)
    : inputs(std::move(input_tensor)), targets(std::move(target_tensor)) {
  // size(0) on a scalar would throw LibTorch's own, less helpful error.
  if (inputs.defined() && inputs.dim() == 0) {
    throw Error("TensorDataset: inputs are a scalar, expected examples along dimension 0");
  }
  if (targets.defined() && targets.dim() == 0) {
    throw Error("TensorDataset: targets are a scalar, expected examples along dimension 0");
  }
  if (!inputs.defined() && targets.defined()) {
    throw Error(fmt::format("TensorDataset: inputs are undefined, targets hold {} examples",
                            targets.size(0)));
  }
  if (inputs.defined() && targets.defined() && inputs.size(0) != targets.size(0)) {
    throw Error(fmt::format("TensorDataset: inputs hold {} examples, targets {}",
                            inputs.size(0), targets.size(0)));
  }
}

}  // namespace trainloop::data
