#pragma once

#include <torch/torch.h>

#include <functional>

namespace trainloop {

/// How tensors are combined element-wise across the processes of a
/// data-parallel fit.
enum class ReduceOp {
  sum,  ///< the sum over all processes
  max,  ///< the largest value of any process
};

/// Combines `tensor` element-wise across every process of a data-parallel
/// fit, in place: afterwards each process holds the same result. Every
/// process must call it with a tensor of the same shape and dtype, in the
/// same order. What `Metric::all_reduce` is given.
using ReduceFunction = std::function<void(torch::Tensor& tensor, ReduceOp op)>;

}  // namespace trainloop
