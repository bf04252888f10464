#include "trainloop/data/torch_dataset.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "trainloop/error.h"

namespace trainloop::data::detail {

int64_t known_size(std::optional<size_t> size) {
  if (!size) {
    throw Error("TorchDataset: the dataset has no size, expected a map-style dataset whose "
                "size() is known");
  }
  return static_cast<int64_t>(*size);
}

torch::Tensor stack_examples(const std::vector<torch::Tensor>& parts, const char* field,
                             int64_t index, const std::vector<size_t>& indices) {
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].defined()) {
      throw Error(fmt::format("TorchDataset: batch {}: example {} has an undefined {} tensor",
                              index, indices[i], field));
    }
    if (parts[i].sizes() != parts[0].sizes()) {
      throw Error(fmt::format(
          "TorchDataset: batch {}: example {} has {} [{}], example {} [{}]; expected one shape "
          "to stack",
          index, indices[i], field, fmt::join(parts[i].sizes(), ", "), indices[0],
          fmt::join(parts[0].sizes(), ", ")));
    }
  }
  return torch::stack(parts);
}

}  // namespace trainloop::data::detail
