#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <type_traits>

#include "trainloop/export.h"
#include "trainloop/data/batch.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// A source of batches, epoch by epoch. Implement it to feed the loop from
/// anything; `Epochs` and `Batches` serve in-memory tensors.
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
  /// exactly once. The default throws `Error`: implement it to train a
  /// source of your own data-parallel.
  virtual void shard(int64_t rank, int64_t world_size, bool pad);

  /// Whether batches come in another order than the examples' (default
  /// false). `predict` refuses a source that shuffles, since its outputs'
  /// rows would not follow the data's.
  virtual bool shuffles() const { return false; }
};

/// Training batches over a `TensorDataset`, reshuffled every epoch.
/// The order of epoch e depends only on (seed, e), so a resumed run sees the
/// same batches. Batches are cut with one `index_select` per batch.
/// Example: `Epochs(train, 64).shuffle(true).seed(42)`
class TRAINLOOP_API Epochs : public BatchSource {
 public:
  /// `batch_size` examples per batch (the last one may be smaller).
  Epochs(TensorDataset dataset, int64_t batch_size);

  /// Whether to shuffle every epoch (default true).
  Epochs& shuffle(bool on);
  /// Whether to drop a last batch smaller than the batch size (default false).
  Epochs& drop_last(bool on);
  /// Seed of the per-epoch order (default 0).
  Epochs& seed(uint64_t seed);

  void start_epoch(int64_t epoch) override;
  int64_t batch_count() const override;
  Batch batch(int64_t index) const override;
  /// The epoch's order (the permutation, or 0..size-1 without shuffling)
  /// split among `world_size` processes: rank r takes positions r,
  /// r + world_size, r + 2 world_size, …. With `pad` the order is first
  /// extended to a multiple of `world_size` by repeating it from its start,
  /// so each shard has ceil(size / world_size) examples; without, shards
  /// differ by at most one example and together hold each exactly once.
  void shard(int64_t rank, int64_t world_size, bool pad) override;
  bool shuffles() const override { return shuffle_; }

  /// The dataset the batches come from.
  const TensorDataset& dataset() const { return dataset_; }
  int64_t batch_size() const { return batch_size_; }
  /// The example order of the current epoch, of this process's shard
  /// (undefined when not shuffling and not sharded).
  const torch::Tensor& order() const { return order_; }
  /// Examples in the current epoch: the dataset's size, or the shard's.
  int64_t example_count() const;

 private:
  TensorDataset dataset_;
  int64_t batch_size_;
  bool shuffle_ = true;
  bool drop_last_ = false;
  uint64_t seed_ = 0;
  int64_t rank_ = 0;
  int64_t world_size_ = 1;
  bool pad_ = false;
  torch::Tensor order_;
};

/// Batches in dataset order, for validation, evaluation and prediction.
/// Example: `Batches(test, 256)`
class TRAINLOOP_API Batches : public Epochs {
 public:
  Batches(TensorDataset dataset, int64_t batch_size);
};

/// The order of the examples for epoch `epoch`: a permutation of
/// `0..size-1` that depends only on (seed, epoch), the same on every platform
/// and LibTorch version.
TRAINLOOP_API torch::Tensor epoch_permutation(int64_t size, uint64_t seed, int64_t epoch);

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
