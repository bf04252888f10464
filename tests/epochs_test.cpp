#include "trainloop/data/epochs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/shards.h"
#include "trainloop/data/tensor_dataset.h"
#include "trainloop/error.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::Batch;
using trainloop::data::Batches;
using trainloop::data::BatchSource;
using trainloop::data::epoch_permutation;
using trainloop::data::Epochs;
using trainloop::data::TensorDataset;
using trainloop::testing_support::expected_shard;
using trainloop::testing_support::iota;
using trainloop::testing_support::to_vector;

// Inputs 0..n-1 and targets twice that, so every pair can be checked.
TensorDataset paired(int64_t n) {
  const torch::Tensor inputs = torch::arange(n, torch::kLong);
  return TensorDataset(inputs, inputs * 2);
}

// Collects every input of one epoch and checks that targets follow inputs.
std::vector<int64_t> epoch_inputs(BatchSource& epochs, int64_t epoch) {
  epochs.start_epoch(epoch);
  std::vector<int64_t> seen;
  for (int64_t i = 0; i < epochs.batch_count(); ++i) {
    const Batch batch = epochs.batch(i);
    EXPECT_TRUE(torch::equal(batch.targets, batch.inputs * 2)) << "batch " << i;
    for (const int64_t x : to_vector(batch.inputs)) seen.push_back(x);
  }
  return seen;
}

// Batches never shuffles: it has no shuffle() or seed() to call, and is no
// Epochs to be converted to one.
template <class Source, class = void>
struct CanShuffle : std::false_type {};
template <class Source>
struct CanShuffle<Source, std::void_t<decltype(std::declval<Source&>().shuffle(true))>>
    : std::true_type {};
template <class Source, class = void>
struct CanSeed : std::false_type {};
template <class Source>
struct CanSeed<Source, std::void_t<decltype(std::declval<Source&>().seed(1))>> : std::true_type {};
static_assert(CanShuffle<Epochs>::value && CanSeed<Epochs>::value);
static_assert(!CanShuffle<Batches>::value, "Batches must not be able to shuffle");
static_assert(!CanSeed<Batches>::value, "Batches must not take a seed");
static_assert(!std::is_convertible_v<Batches&, Epochs&>);
static_assert(!std::is_convertible_v<Epochs&, Batches&>);
static_assert(std::is_convertible_v<Batches, trainloop::data::DataSource>);

TEST(EpochsTest, PermutationIsAPermutation) {
  for (const int64_t n : {0, 1, 2, 7, 100, 1000}) {
    const torch::Tensor p = epoch_permutation(n, 3, 5);
    EXPECT_EQ(p.scalar_type(), torch::kLong);
    EXPECT_EQ(p.numel(), n);
    EXPECT_THAT(to_vector(p), testing::UnorderedElementsAreArray(iota(n))) << "n = " << n;
  }
}

TEST(EpochsTest, PermutationDependsOnlyOnSeedAndEpoch) {
  const torch::Tensor a = epoch_permutation(100, 7, 3);
  epoch_permutation(100, 7, 4);  // no hidden running state
  EXPECT_TRUE(torch::equal(a, epoch_permutation(100, 7, 3)));
  EXPECT_FALSE(torch::equal(a, epoch_permutation(100, 7, 4)));
  EXPECT_FALSE(torch::equal(a, epoch_permutation(100, 8, 3)));
  EXPECT_FALSE(torch::equal(a, torch::arange(100, torch::kLong)));
}

// Pinned once, and cross-checked against a separate Python transcription of
// splitmix64 + xoshiro256** + Lemire. The order must never change between
// platforms, compilers or LibTorch versions, or a resumed run would see other
// batches than an uninterrupted one; a failure here breaks that promise.
TEST(EpochsTest, PermutationIsStable) {
  EXPECT_THAT(to_vector(epoch_permutation(10, 42, 0)),
              testing::ElementsAre(2, 5, 0, 9, 4, 7, 8, 6, 3, 1));
}

TEST(EpochsTest, BatchCounts) {
  Epochs epochs(paired(10), 3);
  EXPECT_EQ(epochs.batch_count(), 4);
  epochs.drop_last(true);
  EXPECT_EQ(epochs.batch_count(), 3);
  EXPECT_EQ(Epochs(paired(9), 3).drop_last(true).batch_count(), 3);
  EXPECT_EQ(Epochs(paired(9), 3).batch_count(), 3);
  EXPECT_EQ(Epochs(paired(2), 3).drop_last(true).batch_count(), 0);
  EXPECT_EQ(Batches(paired(10), 4).batch_count(), 3);
  EXPECT_EQ(Batches(paired(10), 4).drop_last(true).batch_count(), 2);
}

TEST(EpochsTest, ShuffledEpochSeesEveryExampleOnce) {
  Epochs epochs = Epochs(paired(103), 10).seed(11);
  const std::vector<int64_t> first = epoch_inputs(epochs, 0);
  EXPECT_THAT(first, testing::UnorderedElementsAreArray(iota(103)));
  EXPECT_NE(first, iota(103));
  const std::vector<int64_t> second = epoch_inputs(epochs, 1);
  EXPECT_THAT(second, testing::UnorderedElementsAreArray(iota(103)));
  EXPECT_NE(first, second);
  EXPECT_EQ(first, epoch_inputs(epochs, 0));  // resuming at an epoch repeats it
  EXPECT_EQ(to_vector(epochs.order()), to_vector(epoch_permutation(103, 11, 0)));
}

TEST(EpochsTest, UnshuffledBatchesKeepOrderWithoutCopying) {
  const TensorDataset data = paired(23);
  Batches batches(data, 5);
  EXPECT_EQ(epoch_inputs(batches, 0), iota(23));
  EXPECT_FALSE(batches.order().defined());
  EXPECT_FALSE(batches.shuffles());
  // narrow() gives a view of the dataset's storage.
  EXPECT_EQ(batches.batch(1).inputs.data_ptr<int64_t>(), data.inputs.data_ptr<int64_t>() + 5);
  // No start_epoch needed for the data's own order.
  EXPECT_EQ(to_vector(Batches(data, 5).batch(4).inputs), (std::vector<int64_t>{20, 21, 22}));
}

TEST(EpochsTest, LastBatchIsSmaller) {
  Epochs epochs(paired(10), 4);
  epochs.start_epoch(0);
  EXPECT_EQ(epochs.batch(0).inputs.size(0), 4);
  EXPECT_EQ(epochs.batch(2).inputs.size(0), 2);
  EXPECT_EQ(epochs.batch(2).targets.size(0), 2);

  Epochs dropping = Epochs(paired(10), 4).drop_last(true);
  const std::vector<int64_t> seen = epoch_inputs(dropping, 0);
  EXPECT_EQ(seen.size(), 8u);
}

TEST(EpochsTest, MultiDimensionalInputsFollowTheirTargets) {
  const torch::Tensor labels = torch::arange(12, torch::kLong);
  const torch::Tensor images = labels.to(torch::kFloat).view({12, 1, 1, 1}).expand({12, 1, 2, 2});
  Epochs epochs(TensorDataset(images, labels), 5);
  epochs.start_epoch(3);
  const Batch batch = epochs.batch(1);
  EXPECT_EQ(batch.inputs.sizes(), (std::vector<int64_t>{5, 1, 2, 2}));
  EXPECT_TRUE(torch::equal(batch.inputs.select(3, 1).select(2, 0).select(1, 0),
                           batch.targets.to(torch::kFloat)));
}

TEST(EpochsTest, UndefinedTargetsStayUndefined) {
  Epochs epochs(TensorDataset(torch::ones({6, 2}), torch::Tensor()), 4);
  epochs.start_epoch(0);
  EXPECT_FALSE(epochs.batch(1).targets.defined());
  EXPECT_EQ(epochs.batch(1).inputs.size(0), 2);
}

TEST(EpochsTest, RejectsBadBatchSize) {
  EXPECT_THAT([&] { Epochs(paired(10), 0); },
              ThrowsMessage<Error>(HasSubstr("Epochs: batch size 0, expected a positive number")));
  EXPECT_THAT([&] { Batches(paired(10), -3); },
              ThrowsMessage<Error>(HasSubstr("Batches: batch size -3")));
}

TEST(EpochsTest, RejectsEmptyDataset) {
  EXPECT_THAT([&] { Epochs(TensorDataset(), 4); },
              ThrowsMessage<Error>(HasSubstr("Epochs: the dataset holds no examples")));
}

TEST(EpochsTest, RejectsOutOfRangeBatch) {
  Epochs epochs(paired(10), 4);
  epochs.start_epoch(0);
  EXPECT_THAT([&] { epochs.batch(3); },
              ThrowsMessage<Error>(HasSubstr("batch 3 out of range, expected 0 to 2")));
  EXPECT_THAT([&] { epochs.batch(-1); }, ThrowsMessage<Error>(HasSubstr("batch -1 out of range")));
}

TEST(EpochsTest, ShuffledBatchNeedsStartEpoch) {
  Epochs epochs(paired(10), 4);
  EXPECT_THAT([&] { epochs.batch(0); },
              ThrowsMessage<Error>(HasSubstr("before start_epoch()")));
  epochs.start_epoch(0);
  epochs.seed(5);  // a new seed invalidates the drawn order
  EXPECT_THAT([&] { epochs.batch(0); },
              ThrowsMessage<Error>(HasSubstr("before start_epoch()")));
}

TEST(EpochsTest, PaddedShardsSplitTheEpochsPermutation) {
  for (const int64_t world : {2, 3, 4}) {
    std::vector<int64_t> all;
    for (int64_t rank = 0; rank < world; ++rank) {
      Epochs epochs(paired(10), 3);
      epochs.seed(7).shard(rank, world, /*pad=*/true);
      const auto order = to_vector(epoch_permutation(10, 7, 2));
      const auto seen = epoch_inputs(epochs, 2);
      EXPECT_EQ(seen, expected_shard(order, rank, world, true)) << rank << " of " << world;
      EXPECT_EQ(epochs.example_count(), (10 + world - 1) / world);
      all.insert(all.end(), seen.begin(), seen.end());
    }
    // Every example is there; the padding repeats the first few of the order.
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    EXPECT_EQ(all, iota(10)) << world << " ranks";
  }
}

TEST(EpochsTest, UnpaddedShardsHoldEachExampleOnce) {
  std::vector<int64_t> all;
  std::vector<int64_t> sizes;
  for (int64_t rank = 0; rank < 3; ++rank) {
    Batches batches(paired(10), 4);
    batches.shard(rank, 3, /*pad=*/false);
    const auto seen = epoch_inputs(batches, 0);
    EXPECT_EQ(seen, expected_shard(iota(10), rank, 3, false)) << "rank " << rank;
    sizes.push_back(batches.example_count());
    all.insert(all.end(), seen.begin(), seen.end());
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 3, 3}));
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, iota(10));
}

TEST(EpochsTest, ShardOfMoreRanksThanExamplesMayBeEmpty) {
  Batches batches(paired(2), 4);
  batches.shard(2, 3, /*pad=*/false);
  batches.start_epoch(0);
  EXPECT_EQ(batches.batch_count(), 0);
  Epochs padded(paired(2), 4);
  padded.shard(2, 3, /*pad=*/true);
  EXPECT_EQ(epoch_inputs(padded, 0), expected_shard(to_vector(epoch_permutation(2, 0, 0)), 2, 3, true));
}

TEST(EpochsTest, ShardZeroOfOneIsTheWholeData) {
  Epochs epochs(paired(10), 4);
  epochs.shard(1, 2, true);
  epochs.shard(0, 1, false);
  EXPECT_EQ(epochs.batch_count(), 3);
  EXPECT_EQ(epoch_inputs(epochs, 1), to_vector(epoch_permutation(10, 0, 1)));
}

TEST(EpochsTest, RejectsImpossibleShards) {
  Epochs epochs(paired(10), 4);
  EXPECT_THAT([&] { epochs.shard(2, 2, true); },
              ThrowsMessage<Error>(HasSubstr("Epochs: shard 2 of 2, expected a rank from 0 to 1")));
  EXPECT_THAT([&] { epochs.shard(0, 0, true); },
              ThrowsMessage<Error>(HasSubstr("Epochs: shard 0 of 0")));
  Batches batches(paired(10), 4);
  EXPECT_THAT([&] { batches.shard(-1, 2, false); },
              ThrowsMessage<Error>(HasSubstr("Batches: shard -1 of 2")));
}

TEST(EpochsTest, ShardedBatchesNeedStartEpoch) {
  Batches batches(paired(10), 4);
  batches.shard(1, 2, /*pad=*/false);
  EXPECT_THAT([&] { batches.batch(0); },
              ThrowsMessage<Error>(HasSubstr("Batches: batch 0 requested before start_epoch()")));
  batches.start_epoch(0);
  EXPECT_EQ(to_vector(batches.batch(1).inputs), (std::vector<int64_t>{9}));
  EXPECT_FALSE(batches.shuffles());
}

TEST(EpochsTest, DatasetRejectsMismatchedCounts) {
  EXPECT_THAT([&] { TensorDataset(torch::zeros({10, 3}), torch::zeros({9})); },
              ThrowsMessage<Error>(HasSubstr("TensorDataset: inputs hold 10 examples, targets 9")));
  EXPECT_EQ(TensorDataset(torch::zeros({10, 3}), torch::Tensor()).size(), 10);
}

}  // namespace
