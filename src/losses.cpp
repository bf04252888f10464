#include "trainloop/losses.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <string>
#include <vector>

#include "error_text.h"
#include "trainloop/error.h"

namespace trainloop {
namespace {

// Shapes are checked here, at the edge, so a mismatch reads as a trainloop
// Error naming the loss and both shapes instead of a LibTorch assertion from
// deep inside a kernel (or, for mse, a silent broadcast of [N, 1] against [N]
// to [N, N]).

void check_outputs(const char* loss, const torch::Tensor& outputs, const torch::Tensor& targets) {
  if (!outputs.defined() || !targets.defined()) {
    throw Error(fmt::format("{}: outputs or targets are undefined tensors", loss));
  }
  if (!outputs.is_floating_point()) {
    throw Error(fmt::format("{}: outputs are {}, expected a floating-point type", loss,
                            c10::toString(outputs.scalar_type())));
  }
}

// Class-index targets for cross_entropy and nll: int64, shaped like the
// outputs without their class dimension 1.
torch::Tensor class_indices(const char* loss, const torch::Tensor& outputs,
                            const torch::Tensor& targets) {
  check_outputs(loss, outputs, targets);
  if (outputs.dim() < 2) {
    throw Error(fmt::format("{}: outputs {}, expected [N, C, ...] with a class dimension", loss,
                            trainloop::detail::sizes_text(outputs.sizes())));
  }
  std::vector<int64_t> expected(outputs.sizes().begin(), outputs.sizes().end());
  expected.erase(expected.begin() + 1);
  if (targets.sizes() != torch::IntArrayRef(expected)) {
    throw Error(fmt::format("{}: outputs {} need class-index targets {}, got {}", loss,
                            trainloop::detail::sizes_text(outputs.sizes()), trainloop::detail::sizes_text(expected),
                            trainloop::detail::sizes_text(targets.sizes())));
  }
  if (!c10::isIntegralType(targets.scalar_type(), /*includeBool=*/true)) {
    throw Error(fmt::format("{}: targets are {}, expected integer class indices", loss,
                            c10::toString(targets.scalar_type())));
  }
  // Labels often arrive as uint8 (IDX files) or int32; the kernels take int64.
  return targets.to(torch::kLong);
}

std::vector<int64_t> without_ones(torch::IntArrayRef sizes) {
  std::vector<int64_t> kept;
  for (const int64_t size : sizes) {
    if (size != 1) kept.push_back(size);
  }
  return kept;
}

// Targets shaped and typed like the outputs. Shapes that differ only by
// size-1 dimensions ([N, 1] from a one-unit head against [N] labels) are
// matched; anything else, even of equal numel like [2, 3] and [3, 2], is a
// mistake worth an error.
torch::Tensor same_shape(const char* loss, const torch::Tensor& outputs,
                         const torch::Tensor& targets) {
  check_outputs(loss, outputs, targets);
  if (outputs.sizes() != targets.sizes() &&
      without_ones(outputs.sizes()) != without_ones(targets.sizes())) {
    throw Error(fmt::format("{}: outputs {} and targets {} differ in shape", loss,
                            trainloop::detail::sizes_text(outputs.sizes()), trainloop::detail::sizes_text(targets.sizes())));
  }
  return targets.reshape(outputs.sizes()).to(outputs.scalar_type());
}

}  // namespace

namespace losses {

torch::Tensor cross_entropy(const torch::Tensor& outputs, const torch::Tensor& targets) {
  return torch::nn::functional::cross_entropy(outputs,
                                              class_indices("cross_entropy", outputs, targets));
}

torch::Tensor nll(const torch::Tensor& outputs, const torch::Tensor& targets) {
  return torch::nn::functional::nll_loss(outputs, class_indices("nll", outputs, targets));
}

torch::Tensor mse(const torch::Tensor& outputs, const torch::Tensor& targets) {
  return torch::nn::functional::mse_loss(outputs, same_shape("mse", outputs, targets));
}

torch::Tensor l1(const torch::Tensor& outputs, const torch::Tensor& targets) {
  return torch::nn::functional::l1_loss(outputs, same_shape("l1", outputs, targets));
}

torch::Tensor binary_cross_entropy_with_logits(const torch::Tensor& outputs,
                                               const torch::Tensor& targets) {
  return torch::nn::functional::binary_cross_entropy_with_logits(
      outputs, same_shape("binary_cross_entropy_with_logits", outputs, targets));
}

}  // namespace losses
}  // namespace trainloop
