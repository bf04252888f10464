#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/data/batch.h"
#include "trainloop/data/batch_source.h"
#include "trainloop/data/example_order.h"

namespace trainloop::data {

namespace detail {

/// The size of a `TorchDataset`'s dataset; `Error` for one without a size.
TRAINLOOP_API int64_t known_size(std::optional<size_t> size);

/// Stacks per-example tensors into a batch; `Error` naming batch `index`
/// and the dataset indices of two examples whose shapes differ.
TRAINLOOP_API torch::Tensor stack_examples(const std::vector<torch::Tensor>& parts,
                                           const char* field, int64_t index,
                                           const std::vector<size_t>& indices);

template <class T>
struct IsVector : std::false_type {};
template <class T, class Allocator>
struct IsVector<std::vector<T, Allocator>> : std::true_type {};

}  // namespace detail

/// Feeds `fit` from any map-style `torch::data` dataset: one whose
/// `get_batch(ArrayRef<size_t>)` and `size()` exist, i.e. every
/// `torch::data::datasets::Dataset<Self, Example<>>` (with `get(index)`),
/// `torch::data::datasets::MNIST`, and `.map(...)` of them, with or without
/// a `Stack<>` transform. Examples must hold tensors; a batch's `data` and
/// `target` are stacked along a new dimension 0 (targets stay undefined for
/// `Example<Tensor, NoTarget>`). The order of epoch e is
/// `epoch_permutation(size, seed, e)`, as for `Epochs` (both order their
/// examples with `ExampleOrder`), so a resumed run sees the same batches,
/// and a data-parallel fit shards it as it shards `Epochs`. The dataset is
/// held by a shared pointer, so copies of the source share it. A dataset's
/// `get` runs on the thread that asks for the batch (a background one under
/// `prefetch`).
/// Example: `TorchDataset(torch::data::datasets::MNIST(dir), 64).seed(42)`
template <class Dataset>
class TorchDataset : public BatchSource {
  static_assert(std::is_same_v<typename Dataset::BatchRequestType, c10::ArrayRef<size_t>>,
                "TorchDataset needs a map-style dataset (batches requested by index)");
  static_assert(!Dataset::is_stateful,
                "TorchDataset needs a map-style dataset, not a stateful (chunk) one");

 public:
  /// `batch_size` examples per batch (the last one may be smaller). Throws
  /// `Error` for a dataset without a size, an empty one, or a batch size <= 0.
  TorchDataset(Dataset dataset, int64_t batch_size)
      : dataset_(std::make_shared<Dataset>(std::move(dataset))),
        order_(size_of(*dataset_), batch_size, "TorchDataset", /*shuffle=*/true) {}

  /// Whether to shuffle every epoch (default true).
  TorchDataset& shuffle(bool on) {
    order_.shuffle(on);
    return *this;
  }
  /// Whether to drop a last batch smaller than the batch size (default false).
  TorchDataset& drop_last(bool on) {
    order_.drop_last(on);
    return *this;
  }
  /// Seed of the per-epoch order (default 0).
  TorchDataset& seed(uint64_t seed) {
    order_.seed(seed);
    return *this;
  }

  void start_epoch(int64_t epoch) override { order_.start_epoch(epoch); }
  int64_t batch_count() const override { return order_.batch_count(); }
  /// `ExampleOrder::shard`: DistributedSampler's split of the epoch's order.
  void shard(int64_t rank, int64_t world_size, bool pad) override {
    order_.shard(rank, world_size, pad);
  }
  bool shuffles() const override { return order_.shuffle(); }
  Batch batch(int64_t index) const override {
    const std::vector<size_t> indices = order_.indices(index);
    auto examples = dataset_->get_batch(c10::ArrayRef<size_t>(indices));
    using Result = decltype(examples);
    if constexpr (detail::IsVector<Result>::value) {
      return stack(examples, index, indices);
    } else {
      // Already one batch, e.g. after `.map(torch::data::transforms::Stack<>())`.
      return to_batch(std::move(examples));
    }
  }

  /// Number of examples.
  int64_t size() const { return order_.size(); }
  /// Examples in the current epoch: the dataset's size, or the shard's.
  int64_t example_count() const { return order_.example_count(); }
  /// The wrapped dataset.
  Dataset& dataset() const { return *dataset_; }

 private:
  static int64_t size_of(const Dataset& dataset) {
    const auto size = dataset.size();
    return detail::known_size(size ? std::optional<size_t>(*size) : std::nullopt);
  }

  template <class Example>
  static constexpr bool has_target() {
    return !std::is_void_v<typename Example::TargetType>;
  }

  template <class Example>
  static Batch to_batch(Example example) {
    static_assert(std::is_same_v<typename Example::DataType, torch::Tensor>,
                  "TorchDataset needs examples whose data is a torch::Tensor");
    if constexpr (has_target<Example>()) {
      static_assert(std::is_same_v<typename Example::TargetType, torch::Tensor>,
                    "TorchDataset needs examples whose target is a torch::Tensor");
      return {std::move(example.data), std::move(example.target)};
    } else {
      return {std::move(example.data), torch::Tensor()};
    }
  }

  template <class Examples>
  static Batch stack(Examples& examples, int64_t index, const std::vector<size_t>& indices) {
    using Example = typename Examples::value_type;
    std::vector<torch::Tensor> data;
    std::vector<torch::Tensor> targets;
    data.reserve(examples.size());
    for (auto& example : examples) {
      Batch one = to_batch(std::move(example));
      data.push_back(std::move(one.inputs));
      if constexpr (has_target<Example>()) targets.push_back(std::move(one.targets));
    }
    Batch batch{detail::stack_examples(data, "data", index, indices), torch::Tensor()};
    if constexpr (has_target<Example>()) {
      batch.targets = detail::stack_examples(targets, "target", index, indices);
    }
    return batch;
  }

  std::shared_ptr<Dataset> dataset_;
  ExampleOrder order_;
};

}  // namespace trainloop::data
