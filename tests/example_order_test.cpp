#include "trainloop/data/example_order.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <vector>

#include "support/shards.h"
#include "trainloop/error.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::epoch_permutation;
using trainloop::data::ExampleOrder;
using trainloop::testing_support::expected_shard;
using trainloop::testing_support::iota;
using trainloop::testing_support::to_vector;

// Every index of the epoch, batch by batch, through both rows() and indices().
std::vector<int64_t> epoch_indices(ExampleOrder& order, int64_t epoch) {
  order.start_epoch(epoch);
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < order.batch_count(); ++b) {
    const std::vector<int64_t> rows = to_vector(order.rows(b));
    const std::vector<size_t> indices = order.indices(b);
    EXPECT_EQ(std::vector<int64_t>(indices.begin(), indices.end()), rows) << "batch " << b;
    EXPECT_EQ(order.span(b).second, static_cast<int64_t>(rows.size()));
    seen.insert(seen.end(), rows.begin(), rows.end());
  }
  return seen;
}

TEST(ExampleOrderTest, ConsecutiveBatchesNeedNoEpoch) {
  ExampleOrder order(10, 4, "Mine", /*shuffle=*/false);
  EXPECT_TRUE(order.consecutive());
  EXPECT_EQ(order.span(2), (std::pair<int64_t, int64_t>{8, 2}));
  EXPECT_EQ(order.indices(1), (std::vector<size_t>{4, 5, 6, 7}));
  EXPECT_EQ(epoch_indices(order, 3), iota(10));
  EXPECT_FALSE(order.order().defined());
}

TEST(ExampleOrderTest, ShuffledEpochsFollowTheirPermutation) {
  ExampleOrder order(13, 5, "Mine", /*shuffle=*/true);
  order.seed(6).drop_last(true);
  EXPECT_FALSE(order.consecutive());
  EXPECT_EQ(order.batch_count(), 2);
  const std::vector<int64_t> permutation = to_vector(epoch_permutation(13, 6, 4));
  EXPECT_EQ(epoch_indices(order, 4),
            std::vector<int64_t>(permutation.begin(), permutation.begin() + 10));
  EXPECT_EQ(to_vector(order.order()), permutation);
}

TEST(ExampleOrderTest, ShardsAsDistributedSampler) {
  for (const bool shuffle : {false, true}) {
    for (const bool pad : {false, true}) {
      for (int64_t rank = 0; rank < 4; ++rank) {
        ExampleOrder order(10, 3, "Mine", shuffle);
        order.shard(rank, 4, pad);
        const std::vector<int64_t> whole =
            shuffle ? to_vector(epoch_permutation(10, 0, 1)) : iota(10);
        const std::vector<int64_t> expected = expected_shard(whole, rank, 4, pad);
        EXPECT_EQ(epoch_indices(order, 1), expected)
            << "rank " << rank << (shuffle ? " shuffled" : "") << (pad ? " padded" : "");
        EXPECT_EQ(order.example_count(), static_cast<int64_t>(expected.size()));
      }
    }
  }
}

TEST(ExampleOrderTest, ChangedSettingsForgetTheDrawnOrder) {
  ExampleOrder order(6, 2, "Mine", /*shuffle=*/true);
  order.start_epoch(0);
  order.rows(0);
  const auto forgets = [&](const char* what) {
    EXPECT_THAT([&] { order.rows(0); },
                ThrowsMessage<Error>(HasSubstr("Mine: batch 0 requested before start_epoch()")))
        << what;
    order.start_epoch(0);
  };
  order.seed(1);
  forgets("seed");
  order.shuffle(true);
  forgets("shuffle");
  order.shard(1, 2, true);
  forgets("shard");
  order.drop_last(true);  // the order itself is unchanged
  EXPECT_EQ(order.rows(0).numel(), 2);
}

TEST(ExampleOrderTest, BadUseNamesTheSource) {
  EXPECT_THAT([] { ExampleOrder(0, 2, "Mine", true); },
              ThrowsMessage<Error>(HasSubstr("Mine: the dataset holds no examples")));
  EXPECT_THAT([] { ExampleOrder(3, 0, "Mine", true); },
              ThrowsMessage<Error>(HasSubstr("Mine: batch size 0, expected a positive number")));
  ExampleOrder order(5, 2, "Mine", false);
  EXPECT_THAT([&] { order.span(3); },
              ThrowsMessage<Error>(HasSubstr("Mine: batch 3 out of range, expected 0 to 2")));
  EXPECT_THAT([&] { order.start_epoch(-2); },
              ThrowsMessage<Error>(HasSubstr("Mine: start_epoch(-2), expected an epoch")));
  EXPECT_THAT([&] { order.shard(0, 0, false); },
              ThrowsMessage<Error>(HasSubstr("Mine: shard 0 of 0")));
}

}  // namespace
