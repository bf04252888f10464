#pragma once

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "trainloop/export.h"

namespace trainloop::data {

/// The order of the examples for epoch `epoch`: a permutation of
/// `0..size-1` that depends only on (seed, epoch), the same on every platform
/// and LibTorch version.
TRAINLOOP_API torch::Tensor epoch_permutation(int64_t size, uint64_t seed, int64_t epoch);

/// The order in which a source serves its examples and the batches it cuts
/// from it, epoch by epoch: `epoch_permutation(size, seed, epoch)` when
/// shuffling, else 0..size-1; this process's shard of it (`shard`); batches
/// of `batch_size` positions of that, the last one smaller or dropped.
/// `Epochs`, `Batches` and `TorchDataset` all order their examples with it,
/// so the same seed gives the same batches from each; a `BatchSource` of your
/// own that reads example i by index gets the same order and data-parallel
/// sharding from it.
/// Example: `ExampleOrder order(rows, 64, "MySource", /*shuffle=*/true);`
/// then `order.start_epoch(e)` and `order.indices(b)` for batch b.
class TRAINLOOP_API ExampleOrder {
 public:
  /// `size` examples in batches of `batch_size`, shuffled or not; `who`
  /// (a string that outlives the order) names the source in error messages,
  /// and `device` is where `order()` and `rows()` are put. Throws `Error` for
  /// a batch size <= 0 or no examples.
  ExampleOrder(int64_t size, int64_t batch_size, const char* who, bool shuffle,
               torch::Device device = torch::kCPU);

  /// Whether to shuffle every epoch.
  ExampleOrder& shuffle(bool on);
  bool shuffle() const { return shuffle_; }
  /// Whether to drop a last batch smaller than the batch size (default false).
  ExampleOrder& drop_last(bool on);
  bool drop_last() const { return drop_last_; }
  /// Seed of the per-epoch order (default 0).
  ExampleOrder& seed(uint64_t seed);
  uint64_t seed() const { return seed_; }
  /// From the next `start_epoch` on, only process `rank`'s share of
  /// `world_size` (`BatchSource::shard`): rank r takes positions r,
  /// r + world_size, r + 2 world_size, … of the epoch's order. With `pad`
  /// the order is first extended to a multiple of `world_size` by repeating
  /// it from its start, so each shard has ceil(size / world_size) examples;
  /// without, shards differ by at most one example and together hold each
  /// exactly once. 0 of 1 is the whole data. Throws `Error` for a rank
  /// outside 0..world_size-1.
  void shard(int64_t rank, int64_t world_size, bool pad);

  /// Draws epoch `epoch`'s order (>= 0). Changing the shuffle, the seed or
  /// the shard forgets the drawn order, so a stale one is never served.
  void start_epoch(int64_t epoch);

  /// Number of examples in the whole data.
  int64_t size() const { return size_; }
  int64_t batch_size() const { return batch_size_; }
  /// Examples in an epoch: the data's size, or the shard's.
  int64_t example_count() const;
  /// Batches in an epoch.
  int64_t batch_count() const;
  /// Whether batch b is examples b * batch_size, b * batch_size + 1, … in
  /// the data's order (not shuffling, not sharded), so needs no `start_epoch`.
  bool consecutive() const { return !shuffle_ && world_size_ == 1; }
  /// The position of batch `index`'s first example and its example count;
  /// `Error` when out of range. When `consecutive()`, the position is the
  /// first example's index.
  std::pair<int64_t, int64_t> span(int64_t index) const;
  /// The example indices of batch `index` (int64, on the device); `Error`
  /// when out of range or, unless `consecutive()`, before `start_epoch`.
  torch::Tensor rows(int64_t index) const;
  /// The same as `rows`, as a vector.
  std::vector<size_t> indices(int64_t index) const;
  /// The example order of the current epoch, of this process's shard
  /// (undefined when `consecutive()` or before `start_epoch`).
  const torch::Tensor& order() const { return order_; }

 private:
  int64_t size_;
  int64_t batch_size_;
  const char* who_;
  torch::Device device_;
  bool shuffle_;
  bool drop_last_ = false;
  uint64_t seed_ = 0;
  int64_t rank_ = 0;
  int64_t world_size_ = 1;
  bool pad_ = false;
  torch::Tensor order_;
};

}  // namespace trainloop::data
