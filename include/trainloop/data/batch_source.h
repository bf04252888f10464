#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

#include "trainloop/export.h"
#include "trainloop/data/batch.h"

namespace trainloop::data {

/// A source of batches, epoch by epoch. Implement it to feed the loop from
/// anything; `Epochs` and `Batches` serve in-memory tensors, `TorchDataset`
/// a `torch::data` dataset, and `ExampleOrder` gives a source of your own
/// their order and sharding.
class TRAINLOOP_API BatchSource {
 public:
  virtual ~BatchSource() = default;
  /// Prepares epoch `epoch` (0-based), e.g. draws its order.
  virtual void start_epoch(int64_t epoch) = 0;
  /// Number of batches in the current epoch.
  virtual int64_t batch_count() const = 0;
  /// Batch `index` (0-based) of the current epoch.
  virtual Batch batch(int64_t index) const = 0;
  /// Serves from the next `start_epoch` on only the share of process `rank`
  /// of `world_size` (0 <= rank < world_size; 0 of 1 is the whole data), as
  /// PyTorch's DistributedSampler does: a data-parallel fit calls it with
  /// `pad` true for the training data, so that every rank has as many
  /// batches, and false for validation, so that each example is counted
  /// exactly once. The default throws `Error` (except for 0 of 1):
  /// implement it, e.g. with `ExampleOrder::shard`, to train a source of your
  /// own data-parallel.
  virtual void shard(int64_t rank, int64_t world_size, bool pad);

  /// Whether batches come in another order than the examples' (default
  /// false). `predict` refuses a source that shuffles, since its outputs'
  /// rows would not follow the data's.
  virtual bool shuffles() const { return false; }
};

/// A shared handle to any `BatchSource`, or nothing (e.g. no validation data).
/// Converts implicitly from `Epochs`, `Batches` or any other source.
class DataSource {
 public:
  DataSource() = default;
  DataSource(std::nullptr_t) {}  // NOLINT: implicit by design
  template <class Source,
            class = std::enable_if_t<std::is_base_of_v<BatchSource, std::decay_t<Source>>>>
  DataSource(Source source)  // NOLINT: implicit by design
      : source_(std::make_shared<std::decay_t<Source>>(std::move(source))) {}
  DataSource(std::shared_ptr<BatchSource> source) : source_(std::move(source)) {}  // NOLINT

  explicit operator bool() const { return source_ != nullptr; }
  BatchSource& operator*() const { return *source_; }
  BatchSource* operator->() const { return source_.get(); }

 private:
  std::shared_ptr<BatchSource> source_;
};

}  // namespace trainloop::data
