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
#include "trainloop/data/epochs.h"

namespace trainloop::data {

namespace detail {

/// The example order and batch boundaries of `TorchDataset`, apart from the
/// template so that its checks and messages live in the library.
class TRAINLOOP_API ExampleOrder {
 public:
  /// Throws `Error` for a dataset without a size, an empty one, or a batch
  /// size <= 0.
  ExampleOrder(std::optional<size_t> size, int64_t batch_size);
  /// Draws epoch `epoch`'s order from (seed, epoch) when shuffling.
  void start_epoch(int64_t epoch);
  /// Batches per epoch.
  int64_t batch_count() const;
  /// The dataset indices of batch `index`; `Error` when out of range or,
  /// when shuffling, before `start_epoch`.
  std::vector<size_t> batch_indices(int64_t index) const;

  int64_t size = 0;
  int64_t batch_size = 0;
  bool shuffle = true;
  bool drop_last = false;
  uint64_t seed = 0;

 private:
  std::vector<size_t> order_;
};

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
/// `epoch_permutation(size, seed, e)`, as for `Epochs`, so a resumed run
/// sees the same batches. The dataset is held by a shared pointer, so copies
/// of the source share it. A dataset's `get` runs on the thread that asks
/// for the batch (a background one under `prefetch`).
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
        order_(size_of(*dataset_), batch_size) {}

  /// Whether to shuffle every epoch (default true).
  TorchDataset& shuffle(bool on) {
    order_.shuffle = on;
    return *this;
  }
  /// Whether to drop a last batch smaller than the batch size (default false).
  TorchDataset& drop_last(bool on) {
    order_.drop_last = on;
    return *this;
  }
  /// Seed of the per-epoch order (default 0).
  TorchDataset& seed(uint64_t seed) {
    order_.seed = seed;
    return *this;
  }

  void start_epoch(int64_t epoch) override { order_.start_epoch(epoch); }
  int64_t batch_count() const override { return order_.batch_count(); }
  bool shuffles() const override { return order_.shuffle; }
  Batch batch(int64_t index) const override {
    const std::vector<size_t> indices = order_.batch_indices(index);
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
  int64_t size() const { return order_.size; }
  /// The wrapped dataset.
  Dataset& dataset() const { return *dataset_; }

 private:
  static std::optional<size_t> size_of(const Dataset& dataset) {
    const auto size = dataset.size();
    return size ? std::optional<size_t>(*size) : std::nullopt;
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
  detail::ExampleOrder order_;
};

}  // namespace trainloop::data
