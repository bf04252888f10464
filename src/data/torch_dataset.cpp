#include "trainloop/data/torch_dataset.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <string>

#include "trainloop/error.h"

namespace trainloop::data::detail {

ExampleOrder::ExampleOrder(std::optional<size_t> dataset_size, int64_t examples_per_batch)
    : batch_size(examples_per_batch) {
  if (!dataset_size) {
    throw Error("TorchDataset: the dataset has no size, expected a map-style dataset whose "
                "size() is known");
  }
  if (*dataset_size == 0) {
    throw Error("TorchDataset: the dataset holds no examples, expected at least one");
  }
  if (batch_size <= 0) {
    throw Error(fmt::format("TorchDataset: batch size {}, expected a positive number",
                            batch_size));
  }
  size = static_cast<int64_t>(*dataset_size);
}

void ExampleOrder::start_epoch(int64_t epoch) {
  if (epoch < 0) {
    throw Error(
        fmt::format("TorchDataset: start_epoch({}), expected an epoch of 0 or more", epoch));
  }
  order_.clear();
  if (!shuffle) return;
  // The same permutation as Epochs', so swapping one source for the other
  // keeps the batches of a seed.
  const torch::Tensor order = epoch_permutation(size, seed, epoch);
  const int64_t* p = order.data_ptr<int64_t>();
  order_.assign(p, p + size);
}

int64_t ExampleOrder::batch_count() const {
  return drop_last ? size / batch_size : (size + batch_size - 1) / batch_size;
}

std::vector<size_t> ExampleOrder::batch_indices(int64_t index) const {
  const int64_t count = batch_count();
  if (index < 0 || index >= count) {
    throw Error(fmt::format("TorchDataset: batch {} out of range, expected 0 to {} ({} batches)",
                            index, count - 1, count));
  }
  if (shuffle && order_.empty()) {
    throw Error(fmt::format("TorchDataset: batch {} requested before start_epoch(), expected "
                            "start_epoch(epoch) first",
                            index));
  }
  const int64_t start = index * batch_size;
  const int64_t length = std::min(batch_size, size - start);
  std::vector<size_t> indices(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) {
    indices[static_cast<size_t>(i)] =
        shuffle ? order_[static_cast<size_t>(start + i)] : static_cast<size_t>(start + i);
  }
  return indices;
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
