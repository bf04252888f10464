#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "trainloop/export.h"
#include "trainloop/data/batch.h"
#include "trainloop/data/batch_source.h"
#include "trainloop/data/example_order.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

namespace detail {

/// What `Epochs` and `Batches` share: batches of a `TensorDataset` in the
/// order of an `ExampleOrder`, cut with one `index_select` per batch, or as
/// views of the data when the order is the data's own.
class TRAINLOOP_API TensorBatches : public BatchSource {
 public:
  void start_epoch(int64_t epoch) override;
  int64_t batch_count() const override;
  Batch batch(int64_t index) const override;
  /// `ExampleOrder::shard`: DistributedSampler's split of the epoch's order.
  void shard(int64_t rank, int64_t world_size, bool pad) override;
  bool shuffles() const override;

  /// The dataset the batches come from.
  const TensorDataset& dataset() const { return dataset_; }
  int64_t batch_size() const { return order_.batch_size(); }
  /// The example order of the current epoch, of this process's shard
  /// (undefined when not shuffling and not sharded).
  const torch::Tensor& order() const { return order_.order(); }
  /// Examples in the current epoch: the dataset's size, or the shard's.
  int64_t example_count() const { return order_.example_count(); }

 protected:
  /// `who` names the source in error messages.
  TensorBatches(TensorDataset dataset, int64_t batch_size, const char* who, bool shuffle);

 private:
  // Declared before the order, which is built from its size and device.
  TensorDataset dataset_;

 protected:
  ExampleOrder order_;
};

}  // namespace detail

/// Training batches over a `TensorDataset`, reshuffled every epoch.
/// The order of epoch e depends only on (seed, e), so a resumed run sees the
/// same batches (`ExampleOrder`).
/// Example: `Epochs(train, 64).shuffle(true).seed(42)`
class TRAINLOOP_API Epochs : public detail::TensorBatches {
 public:
  /// `batch_size` examples per batch (the last one may be smaller).
  Epochs(TensorDataset dataset, int64_t batch_size);

  /// Whether to shuffle every epoch (default true).
  Epochs& shuffle(bool on);
  /// Whether to drop a last batch smaller than the batch size (default false).
  Epochs& drop_last(bool on);
  /// Seed of the per-epoch order (default 0).
  Epochs& seed(uint64_t seed);
};

/// Batches in dataset order, for validation, evaluation and prediction: it
/// never shuffles, so `predict`'s rows follow the data's.
/// Example: `Batches(test, 256)`
class TRAINLOOP_API Batches : public detail::TensorBatches {
 public:
  /// `batch_size` examples per batch (the last one may be smaller).
  Batches(TensorDataset dataset, int64_t batch_size);

  /// Whether to drop a last batch smaller than the batch size (default false).
  Batches& drop_last(bool on);
};

}  // namespace trainloop::data
