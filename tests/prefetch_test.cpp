#include "trainloop/data/prefetch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "support/shards.h"
#include "trainloop/callback.h"
#include "trainloop/data/epochs.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::Batch;
using trainloop::data::Batches;
using trainloop::data::BatchSource;
using trainloop::data::DataSource;
using trainloop::data::Epochs;
using trainloop::data::prefetch;
using trainloop::data::PrefetchOptions;
using trainloop::data::TensorDataset;
using trainloop::testing_support::expected_shard;
using trainloop::testing_support::iota;
using trainloop::testing_support::to_vector;

// Far longer than any correct run needs; reaching it fails the test.
constexpr auto kPatience = std::chrono::seconds(20);

// A one-shot gate: closed until opened, then open for good.
class Gate {
 public:
  void open() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_ = true;
    }
    opened_.notify_all();
  }
  bool wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    return opened_.wait_for(lock, kPatience, [&] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable opened_;
  bool open_ = false;
};

// Batch i holds i, the epoch, and which thread made it.
struct Recording : BatchSource {
  explicit Recording(int64_t count) : count(count) {}
  void start_epoch(int64_t e) override { epoch = e; }
  int64_t batch_count() const override { return count; }
  Batch batch(int64_t index) const override {
    ++calls;
    const int64_t active = ++in_progress;
    max_in_progress = std::max(max_in_progress.load(), active);
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    if (index == fail_at) {
      --in_progress;
      if (fail_once) fail_at = -1;
      throw std::invalid_argument("record " + std::to_string(index) + " is corrupt");
    }
    --in_progress;
    return {torch::tensor({index}), torch::tensor({epoch})};
  }
  int64_t count;
  int64_t epoch = -1;
  std::chrono::milliseconds delay{0};
  mutable int64_t fail_at = -1;
  bool fail_once = false;
  mutable std::atomic<int64_t> calls{0};
  mutable std::atomic<int64_t> in_progress{0};
  mutable std::atomic<int64_t> max_in_progress{0};
};

TensorDataset numbered(int64_t n) {
  const torch::Tensor x = torch::arange(n, torch::kLong);
  return TensorDataset(x.unsqueeze(1).to(torch::kFloat) / n, x % 4);
}

TEST(PrefetchTest, SameBatchesInTheSameOrder) {
  for (const int64_t depth : {1, 2, 5}) {
    Epochs direct(numbered(53), 4);
    direct.seed(7);
    const auto prefetched = prefetch(Epochs(direct), PrefetchOptions().depth(depth));
    for (const int64_t epoch : {0, 1, 2}) {
      direct.start_epoch(epoch);
      prefetched->start_epoch(epoch);
      ASSERT_EQ(prefetched->batch_count(), direct.batch_count());
      for (int64_t b = 0; b < direct.batch_count(); ++b) {
        const Batch expected = direct.batch(b);
        const Batch got = prefetched->batch(b);
        ASSERT_TRUE(torch::equal(got.inputs, expected.inputs))
            << "depth " << depth << " epoch " << epoch << " batch " << b;
        ASSERT_TRUE(torch::equal(got.targets, expected.targets));
      }
    }
  }
}

// The source may finish batch i + 1 only once the consumer holds batch i,
// and the consumer, while it "computes" batch i, waits for batch i + 1 to be
// finished. Only an implementation that prepares the next batch during the
// computation passes; one that prepares it when asked waits out kPatience.
struct Latched : BatchSource {
  explicit Latched(int64_t count) : count(count), may_finish(count), finished(count) {
    for (int64_t i = 0; i < count; ++i) {
      may_finish[i] = std::make_shared<Gate>();
      finished[i] = std::make_shared<Gate>();
    }
  }
  void start_epoch(int64_t) override {}
  int64_t batch_count() const override { return count; }
  Batch batch(int64_t index) const override {
    if (index > 0 && !may_finish[index]->wait()) {
      throw std::runtime_error("batch " + std::to_string(index) + " was never released");
    }
    finished[index]->open();
    return {torch::tensor({index}), torch::tensor({index})};
  }
  int64_t count;
  std::vector<std::shared_ptr<Gate>> may_finish;
  std::vector<std::shared_ptr<Gate>> finished;
};

TEST(PrefetchTest, PreparesTheNextBatchDuringTheComputation) {
  auto latched = std::make_shared<Latched>(5);
  const auto source = prefetch(std::shared_ptr<BatchSource>(latched), PrefetchOptions().depth(1));
  source->start_epoch(0);
  for (int64_t i = 0; i < 5; ++i) {
    const Batch batch = source->batch(i);
    ASSERT_EQ(batch.inputs.item<int64_t>(), i);
    // Computing batch i:
    if (i + 1 < 5) {
      latched->may_finish[i + 1]->open();
      ASSERT_TRUE(latched->finished[i + 1]->wait())
          << "batch " << i + 1 << " was not prepared while batch " << i << " was in use";
    }
  }
}

TEST(PrefetchTest, RethrowsTheSourcesExceptionInOrder) {
  auto recording = std::make_shared<Recording>(6);
  recording->fail_at = 3;
  const auto source = prefetch(std::shared_ptr<BatchSource>(recording));
  source->start_epoch(0);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(source->batch(i).inputs.item<int64_t>(), i);
  // The same type and message, at the batch that failed.
  EXPECT_THAT([&] { source->batch(3); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("record 3 is corrupt")));
  EXPECT_THAT([&] { source->batch(3); },
              ThrowsMessage<std::invalid_argument>(HasSubstr("record 3 is corrupt")));
  // A source that recovers: asking again retries, and the epoch goes on.
  recording->fail_once = true;
  EXPECT_THROW(source->batch(3), std::invalid_argument);
  for (int64_t i = 3; i < 6; ++i) EXPECT_EQ(source->batch(i).inputs.item<int64_t>(), i);
}

TEST(PrefetchTest, RethrowsTrainloopErrors) {
  Epochs epochs(numbered(8), 4);
  epochs.shuffle(true);
  // Without start_epoch on the source, Epochs refuses to serve a batch.
  struct Forgetful : BatchSource {
    explicit Forgetful(Epochs e) : epochs(std::move(e)) {}
    void start_epoch(int64_t) override {}
    int64_t batch_count() const override { return epochs.batch_count(); }
    Batch batch(int64_t i) const override { return epochs.batch(i); }
    Epochs epochs;
  };
  const auto source = prefetch(Forgetful(epochs));
  source->start_epoch(0);
  EXPECT_THAT([&] { source->batch(0); },
              ThrowsMessage<Error>(HasSubstr("Epochs: batch 0 requested before start_epoch()")));
}

TEST(PrefetchTest, AbandonedEpochsStopTheThread) {
  auto recording = std::make_shared<Recording>(1000);
  const auto source = prefetch(std::shared_ptr<BatchSource>(recording), PrefetchOptions().depth(3));
  for (const int64_t epoch : {0, 1, 2}) {
    source->start_epoch(epoch);
    const int64_t before = recording->calls;
    // The loop stops after two batches (a cancel), then starts the next epoch.
    for (int64_t i = 0; i < 2; ++i) {
      const Batch batch = source->batch(i);
      EXPECT_EQ(batch.inputs.item<int64_t>(), i);
      EXPECT_EQ(batch.targets.item<int64_t>(), epoch);
    }
    // Give an unbounded producer the chance to run ahead; a bounded one
    // stops at depth batches past those taken (plus one in preparation).
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_LE(recording->calls - before, 2 + 3 + 1);
  }
  // A last epoch runs to its end with the right batches.
  source->start_epoch(3);
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(source->batch(i).inputs.item<int64_t>(), i);
  EXPECT_EQ(recording->max_in_progress, 1);
}

TEST(PrefetchTest, DestructionJoinsTheThreadMidEpoch) {
  auto recording = std::make_shared<Recording>(100);
  recording->delay = std::chrono::milliseconds(5);
  std::weak_ptr<Recording> watch = recording;
  {
    auto source = prefetch(std::shared_ptr<BatchSource>(std::move(recording)));
    source->start_epoch(0);
    source->batch(0);
    // Destroyed here with the producer busy or waiting for room.
  }
  // The thread held the last reference to the source: it is gone, and no call
  // is left running.
  EXPECT_TRUE(watch.expired());
}

TEST(PrefetchTest, DestructionBeforeAnyEpoch) {
  const auto source = prefetch(Epochs(numbered(4), 2));
  EXPECT_EQ(source->batch_count(), 2);
}

TEST(PrefetchTest, OutOfOrderRequestsRestartAtTheBatch) {
  Epochs direct(numbered(40), 4);
  direct.seed(1);
  const auto source = prefetch(Epochs(direct));
  direct.start_epoch(2);
  source->start_epoch(2);
  for (const int64_t b : {5, 6, 1, 9, 9, 0}) {
    EXPECT_TRUE(torch::equal(source->batch(b).inputs, direct.batch(b).inputs)) << "batch " << b;
  }
}

TEST(PrefetchTest, BadUse) {
  EXPECT_THAT([] { prefetch(Epochs(numbered(4), 2), PrefetchOptions().depth(0)); },
              ThrowsMessage<Error>(HasSubstr("prefetch: depth 0, expected 1 or more")));
  EXPECT_THAT([] { prefetch(nullptr); }, ThrowsMessage<Error>(HasSubstr("prefetch: no source")));
  const auto source = prefetch(Epochs(numbered(4), 2));
  EXPECT_THAT([&] { source->batch(0); },
              ThrowsMessage<Error>(HasSubstr("prefetch: batch 0 requested before start_epoch()")));
  source->start_epoch(0);
  EXPECT_THAT([&] { source->batch(2); },
              ThrowsMessage<Error>(HasSubstr("prefetch: batch 2 out of range, expected 0 to 1")));
  // The source's own start_epoch error reaches the caller directly.
  EXPECT_THAT([&] { source->start_epoch(-1); },
              ThrowsMessage<Error>(HasSubstr("Epochs: start_epoch(-1)")));
  EXPECT_THAT([&] { source->batch(0); },
              ThrowsMessage<Error>(HasSubstr("requested before start_epoch()")));
}

// Example i's input is i.
TensorDataset indexed(int64_t n) {
  const torch::Tensor x = torch::arange(n, torch::kLong);
  return TensorDataset(x, x % 4);
}

std::vector<int64_t> epoch_inputs(BatchSource& source, int64_t epoch) {
  source.start_epoch(epoch);
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < source.batch_count(); ++b) {
    for (const int64_t x : to_vector(source.batch(b).inputs)) seen.push_back(x);
  }
  return seen;
}

TEST(PrefetchTest, ShardsTheSourceAsDistributedSamplerDoes) {
  for (const bool pad : {true, false}) {
    std::vector<int64_t> all;
    for (int64_t rank = 0; rank < 3; ++rank) {
      const auto source = prefetch(Epochs(indexed(10), 3).seed(4), PrefetchOptions().depth(2));
      source->shard(rank, 3, pad);
      const auto seen = epoch_inputs(*source, 1);
      const auto order = trainloop::data::epoch_permutation(10, 4, 1);
      EXPECT_EQ(seen, expected_shard(to_vector(order), rank, 3, pad))
          << "rank " << rank << (pad ? " padded" : "");
      all.insert(all.end(), seen.begin(), seen.end());
    }
    // Padded: 12 examples, the order's first two twice; unpadded: each once.
    EXPECT_EQ(all.size(), pad ? 12u : 10u);
    std::sort(all.begin(), all.end());
    all.erase(std::unique(all.begin(), all.end()), all.end());
    EXPECT_EQ(all, iota(10));
  }
}

TEST(PrefetchTest, ShardDropsTheBatchesPreparedForTheOldOrder) {
  Batches whole(indexed(12), 2);
  const auto source = prefetch(whole, PrefetchOptions().depth(4));
  source->start_epoch(0);
  EXPECT_EQ(to_vector(source->batch(0).inputs), (std::vector<int64_t>{0, 1}));
  source->shard(1, 2, /*pad=*/false);
  EXPECT_THAT([&] { source->batch(1); },
              ThrowsMessage<Error>(HasSubstr("prefetch: batch 1 requested before start_epoch()")));
  EXPECT_EQ(source->batch_count(), 3);
  EXPECT_EQ(epoch_inputs(*source, 0), expected_shard(iota(12), 1, 2, false));
  // And whole again, with none of the shard's batches left over.
  source->shard(0, 1, /*pad=*/false);
  EXPECT_EQ(epoch_inputs(*source, 0), iota(12));
}

TEST(PrefetchTest, ShardAndShufflesAreTheSources) {
  EXPECT_TRUE(prefetch(Epochs(indexed(4), 2))->shuffles());
  EXPECT_FALSE(prefetch(Batches(indexed(4), 2))->shuffles());
  EXPECT_THAT([] { prefetch(Epochs(indexed(4), 2))->shard(2, 2, true); },
              ThrowsMessage<Error>(HasSubstr("Epochs: shard 2 of 2")));
  const auto own = prefetch(std::shared_ptr<BatchSource>(std::make_shared<Recording>(3)));
  EXPECT_THAT([&] { own->shard(1, 2, true); },
              ThrowsMessage<Error>(HasSubstr("cannot be split among 2 processes (rank 1)")));
}

// In a fit whose callback cancels every epoch after three batches: the same
// weights with prefetching as without.
TEST(PrefetchTest, FitWithCancelledEpochsMatchesTheUnwrappedSource) {
  auto train = [](DataSource source) {
    torch::manual_seed(5);
    torch::nn::Linear model(1, 4);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.3));
    trainloop::TrainingLoop loop(
        std::move(source), trainloop::data::Batches(numbered(30), 7), optimizer,
        trainloop::losses::cross_entropy, {},
        {trainloop::callbacks::lambda([](trainloop::Event event, trainloop::TrainingLoop& l) {
          if (event == trainloop::Event::batch_end &&
              l.state().phase == trainloop::Phase::training && l.state().batch == 2) {
            throw trainloop::CancelEpoch();
          }
        })});
    loop.fit(model, 4);
    return torch::cat({model->weight.detach().flatten(), model->bias.detach()});
  };
  const Epochs epochs = Epochs(numbered(60), 4).seed(8);
  const torch::Tensor direct = train(epochs);
  const torch::Tensor prefetched = train(prefetch(epochs, PrefetchOptions().depth(4)));
  EXPECT_TRUE(torch::equal(direct, prefetched));
}

}  // namespace
