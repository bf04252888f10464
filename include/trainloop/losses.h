#pragma once

#include <torch/torch.h>

#include <functional>

#include "trainloop/export.h"

namespace trainloop {

/// A loss: `(outputs, targets) -> scalar tensor`, mean-reduced over the batch.
using LossFunction = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>;

namespace losses {
/// Softmax cross-entropy of logits `[N, C, ...]` against class indices `[N, ...]`.
TRAINLOOP_API torch::Tensor cross_entropy(const torch::Tensor& outputs,
                                          const torch::Tensor& targets);
/// Negative log-likelihood of log-probabilities `[N, C]` against class indices `[N]`.
TRAINLOOP_API torch::Tensor nll(const torch::Tensor& outputs, const torch::Tensor& targets);
/// Mean squared error; outputs and targets of the same shape.
TRAINLOOP_API torch::Tensor mse(const torch::Tensor& outputs, const torch::Tensor& targets);
/// Mean absolute error; outputs and targets of the same shape.
TRAINLOOP_API torch::Tensor l1(const torch::Tensor& outputs, const torch::Tensor& targets);
/// Sigmoid binary cross-entropy of logits against 0/1 targets of the same
/// number of elements (a `[N, 1]` output matches `[N]` targets).
TRAINLOOP_API torch::Tensor binary_cross_entropy_with_logits(const torch::Tensor& outputs,
                                                             const torch::Tensor& targets);
}  // namespace losses

}  // namespace trainloop
