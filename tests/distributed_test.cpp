// torchrun's environment, c10d process groups over 127.0.0.1 (ranks as
// threads of this process), and metrics combined across ranks.
#include "trainloop/distributed.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "support/child_process.h"
#include "support/ranks.h"
#include "trainloop/error.h"
#include "trainloop/metrics.h"

namespace trainloop {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using testing_support::free_port;
using testing_support::local_environment;
using testing_support::run_ranks;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Clears torchrun's variables for each test and puts back what was there.
class EnvironmentTest : public testing::Test {
 protected:
  static constexpr const char* kNames[] = {"RANK",        "WORLD_SIZE",  "LOCAL_RANK",
                                           "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"};
  void SetUp() override {
    for (const char* name : kNames) {
      const char* value = std::getenv(name);
      if (value != nullptr) saved_[name] = value;
      unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kNames) {
      unsetenv(name);
      if (saved_.count(name) != 0) setenv(name, saved_[name].c_str(), 1);
    }
  }
  static void set(const char* name, const char* value) { setenv(name, value, 1); }
  static void set_job(const char* rank, const char* world) {
    set("RANK", rank);
    set("WORLD_SIZE", world);
    set("MASTER_ADDR", "127.0.0.1");
    set("MASTER_PORT", "29500");
  }

 private:
  std::map<std::string, std::string> saved_;
};

TEST_F(EnvironmentTest, NothingSetIsOneProcess) {
  EXPECT_FALSE(distributed::read_environment().has_value());
  EXPECT_EQ(distributed::init(), nullptr);
}

TEST_F(EnvironmentTest, WorldSizeOneIsOneProcess) {
  set("WORLD_SIZE", "1");
  EXPECT_FALSE(distributed::read_environment().has_value());
  set("RANK", "0");
  EXPECT_FALSE(distributed::read_environment().has_value());
  EXPECT_EQ(distributed::init(), nullptr);
}

TEST_F(EnvironmentTest, ReadsEveryVariable) {
  set_job("3", "4");
  set("LOCAL_RANK", "1");
  set("LOCAL_WORLD_SIZE", "2");
  const auto env = distributed::read_environment();
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_world_size, 2);
  EXPECT_EQ(env->master_addr, "127.0.0.1");
  EXPECT_EQ(env->port, 29500);
}

TEST_F(EnvironmentTest, LocalValuesDefaultToTheGlobalOnes) {
  set_job("1", "2");
  const auto env = distributed::read_environment();
  ASSERT_TRUE(env.has_value());
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->local_world_size, 2);
}

TEST_F(EnvironmentTest, RankMustBeBelowWorldSize) {
  set_job("2", "2");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("RANK is 2, expected 0 to 1 (WORLD_SIZE is 2)")));
  set_job("-1", "2");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("RANK is -1, expected 0 to 1")));
}

TEST_F(EnvironmentTest, NumbersMustBeWholeNumbers) {
  set_job("one", "2");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("RANK is \"one\", expected a whole number")));
  set_job("0", "2x");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("WORLD_SIZE is \"2x\", expected a whole number")));
  set_job("0", "0");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("WORLD_SIZE is 0, expected 1 to 65536 processes")));
}

// A mistyped WORLD_SIZE is refused before anything is sized by it (it once
// grew to 9.7 GB); so are numbers beyond int64_t and out-of-range ones of
// every other variable, each naming its range.
TEST_F(EnvironmentTest, EveryNumberIsBounded) {
  set_job("0", "99999999999");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr(
                  "WORLD_SIZE is 99999999999, expected 1 to 65536 processes")));
  set_job("0", "999999999999999999999999");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr(
                  "WORLD_SIZE is 999999999999999999999999, expected 1 to 65536 processes")));
  set_job("0", "65537");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("WORLD_SIZE is 65537, expected 1 to 65536")));
  set_job("99999999999999999999", "2");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr(
                  "RANK is 99999999999999999999, expected 0 to 1 (WORLD_SIZE is 2)")));
  set_job("1", "2");
  set("MASTER_PORT", "99999999999999999999");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("MASTER_PORT is 99999999999999999999, expected 1 to "
                                             "65535 (the TCP port rank 0 listens on)")));
  set("MASTER_PORT", "29500");
  set("LOCAL_WORLD_SIZE", "99999999999");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("LOCAL_WORLD_SIZE is 99999999999, expected 1 to 2")));
  set("LOCAL_WORLD_SIZE", "1");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("LOCAL_RANK is not set and RANK 1 is not below "
                                             "LOCAL_WORLD_SIZE 1; set LOCAL_RANK")));
  set("LOCAL_RANK", "-99999999999999999999");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr(
                  "LOCAL_RANK is -99999999999999999999, expected 0 to 0 (LOCAL_WORLD_SIZE is 1)")));
  unsetenv("LOCAL_RANK");
  unsetenv("LOCAL_WORLD_SIZE");
  set_job("65535", "65536");
  const auto largest = distributed::read_environment();
  ASSERT_TRUE(largest.has_value());
  EXPECT_EQ(largest->world_size, distributed::max_world_size);
}

TEST_F(EnvironmentTest, RankAndWorldSizeComeTogether) {
  set("RANK", "1");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("RANK is \"1\" but WORLD_SIZE is not set")));
  unsetenv("RANK");
  set("WORLD_SIZE", "2");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("WORLD_SIZE is 2 but RANK is not set")));
}

TEST_F(EnvironmentTest, MasterAddressAndPortAreRequired) {
  set_job("0", "2");
  unsetenv("MASTER_PORT");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("MASTER_PORT is not set")));
  set("MASTER_PORT", "70000");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("MASTER_PORT is 70000, expected 1 to 65535")));
  set("MASTER_PORT", "29500");
  unsetenv("MASTER_ADDR");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("MASTER_ADDR is not set")));
}

TEST_F(EnvironmentTest, LocalRankMustFitTheLocalWorld) {
  set_job("1", "4");
  set("LOCAL_WORLD_SIZE", "2");
  set("LOCAL_RANK", "2");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("LOCAL_RANK is 2, expected 0 to 1")));
  set("LOCAL_RANK", "0");
  set("LOCAL_WORLD_SIZE", "5");
  EXPECT_THAT([] { distributed::read_environment(); },
              ThrowsMessage<Error>(HasSubstr("LOCAL_WORLD_SIZE is 5, expected 1 to 4")));
}

TEST(ProcessGroupTest, UnreachableMasterFailsWithinTheTimeout) {
  const int port = free_port();  // nobody listens there
  const auto start = Clock::now();
  EXPECT_THAT(
      [&] {
        distributed::ProcessGroup group(local_environment(1, 2, port),
                                        distributed::Options().timeout(std::chrono::seconds(1)));
      },
      ThrowsMessage<Error>(HasSubstr(
          fmt::format("rank 1 of 2 could not reach rank 0 at 127.0.0.1:{} (MASTER_ADDR, "
                      "MASTER_PORT) within 1 s",
                      port))));
  EXPECT_LT(seconds_since(start), 10.0);
}

TEST(ProcessGroupTest, RankThatNeverArrivesFailsWithinTheTimeout) {
  const int port = free_port();
  const auto start = Clock::now();
  EXPECT_THAT(
      [&] {
        distributed::ProcessGroup group(local_environment(0, 2, port),
                                        distributed::Options().timeout(std::chrono::seconds(1)));
      },
      ThrowsMessage<Error>(HasSubstr(fmt::format(
          "distributed: rank 0 of 2 waited 1 s (the timeout) for every rank at 127.0.0.1:{} "
          "(MASTER_ADDR:MASTER_PORT): 1 of 2 joined; did all 2 start, with the same MASTER_ADDR, "
          "MASTER_PORT and WORLD_SIZE?",
          port))));
  EXPECT_LT(seconds_since(start), 10.0);
}

// Rank 0 of the largest job, alone: it waits for the others without sizing
// anything by their number (Gloo's rendezvous spun for over 20 s), and
// gives up at the timeout.
TEST(ProcessGroupTest, LargestJobWithOneRankFailsAtTheTimeout) {
  const auto start = Clock::now();
  EXPECT_THAT(
      [&] {
        distributed::ProcessGroup group(
            local_environment(0, distributed::max_world_size, free_port()),
            distributed::Options().timeout(std::chrono::seconds(2)));
      },
      ThrowsMessage<Error>(HasSubstr("1 of 65536 joined")));
  EXPECT_LT(seconds_since(start), 5.0);
}

TEST(ProcessGroupTest, WorldSizeBeyondTheBoundFailsAtOnce) {
  const auto start = Clock::now();
  EXPECT_THAT(
      [&] {
        distributed::ProcessGroup group(local_environment(0, 99999999999, free_port()),
                                        distributed::Options().timeout(std::chrono::seconds(30)));
      },
      ThrowsMessage<Error>(
          HasSubstr("distributed: world size 99999999999, expected 1 to 65536 processes")));
  EXPECT_LT(seconds_since(start), 1.0);
}

TEST(ProcessGroupTest, TimeoutMustBePositiveAndFinite) {
  for (const auto timeout : {std::chrono::milliseconds(0), std::chrono::milliseconds::max()}) {
    EXPECT_THAT(
        [&] {
          distributed::ProcessGroup group(local_environment(0, 2, free_port()),
                                          distributed::Options().timeout(timeout));
        },
        ThrowsMessage<Error>(HasSubstr(fmt::format(
            "distributed: timeout {} ms, expected a positive time of at most 365 days",
            timeout.count()))));
  }
}

// The timeout bounds the whole start-up, not each part: a rank that spent
// most of it reaching rank 0 waits only the rest for the third rank (it
// once waited for the master, then a whole timeout more in Gloo).
TEST(ProcessGroupTest, TimeoutCoversTheWholeStartUp) {
  const int port = free_port();
  const auto timeout = std::chrono::seconds(4);
  std::vector<std::string> errors(2);
  std::vector<double> failed_at(2);
  const auto start = Clock::now();
  std::vector<std::thread> ranks;
  for (int64_t rank : {1, 0}) {
    ranks.emplace_back([&, rank] {
      // Rank 0 (the master) comes 1.5 s late; rank 2 never.
      if (rank == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      try {
        distributed::ProcessGroup group(local_environment(rank, 3, port),
                                        distributed::Options().timeout(timeout));
      } catch (const Error& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
      failed_at[static_cast<size_t>(rank)] = seconds_since(start);
    });
  }
  for (auto& thread : ranks) thread.join();
  EXPECT_THAT(errors[1], HasSubstr("rank 1 of 3 waited 4 s (the timeout) for every rank"));
  EXPECT_THAT(errors[1], HasSubstr("2 of 3 joined"));
  EXPECT_LT(failed_at[1], 5.3) << "rank 1 waited longer than its timeout of 4 s";
  EXPECT_THAT(errors[0], HasSubstr("rank 0 of 3 "));
}

// Ranks started with different WORLD_SIZE fail at the rendezvous, each
// naming both values, at once (Gloo said `enforce fail … 136 vs 272` after
// the timeout).
TEST(ProcessGroupTest, DifferentWorldSizesFailNamingBoth) {
  const int port = free_port();
  std::vector<std::string> errors(2);
  double waited = 0;
  const auto start = Clock::now();
  std::thread first([&] {
    try {
      distributed::ProcessGroup group(local_environment(0, 2, port),
                                      distributed::Options().timeout(std::chrono::seconds(20)));
    } catch (const Error& e) {
      errors[0] = e.what();
    }
    waited = seconds_since(start);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // rank 0 publishes first
  try {
    distributed::ProcessGroup group(local_environment(1, 4, port),
                                    distributed::Options().timeout(std::chrono::seconds(20)));
  } catch (const Error& e) {
    errors[1] = e.what();
  }
  first.join();
  const std::string both =
      "ranks were started with different WORLD_SIZE: 2 and 4 (rank 1); give every rank the same "
      "WORLD_SIZE";
  EXPECT_THAT(errors[0], HasSubstr("distributed: rank 0 of 2: " + both));
  EXPECT_THAT(errors[1], HasSubstr("distributed: rank 1 of 4: " + both));
  EXPECT_LT(waited, 10.0);
}

// A failed start-up prints one line, the Error: none of LibTorch's own
// (glog's `WARNING: Logging before InitGoogleLogging()`, TCPStore's retries)
// before it. In real processes, so that glog starts uninitialised.
TEST(ProcessGroupTest, FailedStartUpPrintsOneLine) {
  const auto dir = std::filesystem::temp_directory_path() /
                   fmt::format("trainloop-dist-startup-{}", ::getpid());
  std::filesystem::create_directories(dir);
  for (const char* rank : {"0", "1"}) {
    const auto log = dir / fmt::format("rank{}.log", rank);
    std::filesystem::remove(log);
    testing_support::ChildProcess worker(
        {TRAINLOOP_DISTRIBUTED_WORKER, "--out", (dir / "out").string(), "--timeout-ms", "1000"},
        log,
        {{"RANK", rank},
         {"WORLD_SIZE", "2"},
         {"MASTER_ADDR", "127.0.0.1"},
         {"MASTER_PORT", std::to_string(free_port())}});
    const auto exit = worker.wait_for(std::chrono::seconds(30));
    ASSERT_TRUE(exit.has_value()) << "rank " << rank << " alone did not give up";
    EXPECT_EQ(exit->code, 1);
    const std::string text = worker.log();
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
    EXPECT_THAT(text, testing::StartsWith(
                          fmt::format("distributed_worker rank {}: distributed: rank {} of 2", rank,
                                      rank)));
  }
  std::filesystem::remove_all(dir);
}

TEST(ProcessGroupTest, PortInUseIsNamed) {
  const int port = free_port();
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  EXPECT_THAT(
      [&] {
        distributed::ProcessGroup group(local_environment(0, 2, port),
                                        distributed::Options().timeout(std::chrono::seconds(1)));
      },
      ThrowsMessage<Error>(HasSubstr(fmt::format(
          "rank 0 of 2 could not serve the rendezvous at 127.0.0.1:{} (MASTER_ADDR, MASTER_PORT)",
          port))));
  ::close(fd);
}

TEST(ProcessGroupTest, RejectsAnImpossibleRank) {
  EXPECT_THAT([] { distributed::ProcessGroup group(local_environment(2, 2, 1)); },
              ThrowsMessage<Error>(HasSubstr("rank 2 of 2, expected a rank from 0 to 1")));
}

TEST(ProcessGroupTest, CollectivesCombineEveryRank) {
  std::vector<std::vector<float>> sums(2), maxima(2), broadcasts(2), asyncs(2);
  std::vector<int64_t> longs(2);
  std::vector<std::vector<int64_t>> gathers(2);
  std::vector<distributed::Statistics> statistics(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto r = static_cast<size_t>(group->rank());
    EXPECT_EQ(group->world_size(), 2);
    EXPECT_EQ(group->backend_name(), "gloo");
    EXPECT_EQ(group->device(), torch::Device(torch::kCPU));
    const float mine = static_cast<float>(r + 1);
    torch::Tensor sum = torch::tensor({mine, 10 * mine});
    group->all_reduce(sum);
    sums[r] = {sum[0].item<float>(), sum[1].item<float>()};
    torch::Tensor largest = torch::tensor({mine, -mine});
    group->all_reduce(largest, ReduceOp::max);
    maxima[r] = {largest[0].item<float>(), largest[1].item<float>()};
    torch::Tensor counted = torch::tensor({static_cast<int64_t>(r) + (int64_t{1} << 40)});
    group->all_reduce(counted);
    longs[r] = counted.item<int64_t>();
    torch::Tensor shared = torch::full({3}, mine);
    group->broadcast(shared, 1);
    broadcasts[r] = {shared[0].item<float>(), shared[2].item<float>()};
    torch::Tensor later = torch::full({4}, mine);
    distributed::Work work = group->all_reduce_async(later);
    EXPECT_TRUE(work.pending());
    work.wait();
    EXPECT_FALSE(work.pending());
    asyncs[r] = {later[0].item<float>(), later[3].item<float>()};
    statistics[r] = group->statistics();
    const auto gathered = group->all_gather(torch::full({2}, static_cast<uint8_t>(r + 7), torch::kUInt8));
    for (const auto& part : gathered) gathers[r].push_back(part[1].item<int64_t>());
  });
  for (size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(sums[r], (std::vector<float>{3, 30})) << "rank " << r;
    EXPECT_EQ(maxima[r], (std::vector<float>{2, -1})) << "rank " << r;
    EXPECT_EQ(longs[r], (int64_t{1} << 41) + 1) << "rank " << r;
    EXPECT_EQ(broadcasts[r], (std::vector<float>{2, 2})) << "rank " << r;
    EXPECT_EQ(asyncs[r], (std::vector<float>{3, 3})) << "rank " << r;
    EXPECT_EQ(gathers[r], (std::vector<int64_t>{7, 8})) << "rank " << r;
    EXPECT_EQ(statistics[r].all_reduces, 4);
    EXPECT_EQ(statistics[r].bytes, 2 * 4 + 2 * 4 + 8 + 4 * 4);
    EXPECT_GE(statistics[r].wait_seconds, 0.0);
  }
}

TEST(ProcessGroupTest, RankThatLeavesMakesTheOtherFailWithinTheTimeout) {
  const int port = free_port();
  std::optional<std::string> error;
  double waited = 0;
  std::thread leaver([&] {
    distributed::ProcessGroup group(local_environment(1, 2, port),
                                    distributed::Options().timeout(std::chrono::seconds(2)));
    // Leaves without taking part: its sockets close.
  });
  std::thread stayer([&] {
    distributed::ProcessGroup group(local_environment(0, 2, port),
                                    distributed::Options().timeout(std::chrono::seconds(2)));
    leaver.join();
    const auto start = Clock::now();
    try {
      torch::Tensor tensor = torch::ones({8});
      group.all_reduce(tensor);
    } catch (const Error& e) {
      error = e.what();
    }
    waited = seconds_since(start);
  });
  stayer.join();
  ASSERT_TRUE(error.has_value()) << "the all_reduce with a rank gone did not fail";
  EXPECT_THAT(*error, HasSubstr("distributed: all_reduce failed on rank 0 of 2"));
  EXPECT_LT(waited, 10.0);
}

// --- metrics combined across ranks -----------------------------------------

struct Batch {
  torch::Tensor outputs;
  torch::Tensor targets;
  torch::Tensor loss;
};

std::vector<Batch> make_batches(int64_t count, int64_t classes, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<Batch> batches;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = 3 + i;  // batches of different sizes weigh differently
    torch::Tensor outputs = torch::randn({n, classes});
    torch::Tensor targets = torch::randint(0, classes, {n});
    batches.push_back({outputs, targets, torch::nn::functional::cross_entropy(outputs, targets)});
  }
  return batches;
}

// Every built-in metric, by name.
std::vector<std::shared_ptr<Metric>> all_metrics() {
  return {metrics::loss(), metrics::accuracy(), metrics::top_k_accuracy(2),
          metrics::matthews_correlation(), metrics::perplexity()};
}

// Each metric's value when rank r gets the batches `split` assigns it,
// after all_reduce, against one metric given every batch.
void expect_reduced_equals_whole(const std::vector<Batch>& batches,
                                 const std::vector<int64_t>& split) {
  std::vector<double> whole;
  for (const auto& metric : all_metrics()) {
    for (const auto& b : batches) metric->update(b.outputs, b.targets, b.loss);
    whole.push_back(metric->compute());
  }
  std::vector<std::vector<double>> reduced(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const int64_t rank = group->rank();
    for (const auto& metric : all_metrics()) {
      for (size_t i = 0; i < batches.size(); ++i) {
        if (split[i] == rank) metric->update(batches[i].outputs, batches[i].targets, batches[i].loss);
      }
      metric->all_reduce(group->reduce_function());
      reduced[static_cast<size_t>(rank)].push_back(metric->compute());
    }
  });
  const auto names = all_metrics();
  for (size_t r = 0; r < 2; ++r) {
    ASSERT_EQ(reduced[r].size(), whole.size());
    for (size_t m = 0; m < whole.size(); ++m) {
      EXPECT_NEAR(reduced[r][m], whole[m], 1e-12) << names[m]->name() << " on rank " << r;
    }
  }
}

TEST(MetricAllReduceTest, EachRanksShareAddsUpToTheWhole) {
  const auto batches = make_batches(6, 4, 11);
  expect_reduced_equals_whole(batches, {0, 1, 1, 0, 1, 0});
}

TEST(MetricAllReduceTest, RankWithoutBatchesAddsNothing) {
  const auto batches = make_batches(3, 3, 12);
  expect_reduced_equals_whole(batches, {1, 1, 1});
}

TEST(MetricAllReduceTest, NoRankWithBatchesStaysEmpty) {
  std::vector<std::vector<bool>> nan(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    for (const auto& metric : all_metrics()) {
      metric->all_reduce(group->reduce_function());
      nan[static_cast<size_t>(group->rank())].push_back(std::isnan(metric->compute()));
    }
  });
  EXPECT_EQ(nan[0], std::vector<bool>(5, true));
  EXPECT_EQ(nan[1], std::vector<bool>(5, true));
}

TEST(MetricAllReduceTest, MetricWithoutAllReduceSaysSo) {
  struct Counting : Metric {
    std::string name() const override { return "counting"; }
    void reset() override {}
    void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {}
    double compute() const override { return 0; }
    std::shared_ptr<Metric> clone() const override { return std::make_shared<Counting>(); }
  };
  Counting metric;
  EXPECT_THAT([&] { metric.all_reduce([](torch::Tensor&, ReduceOp) {}); },
              ThrowsMessage<Error>(HasSubstr("metric counting: all_reduce() is not implemented")));
}

}  // namespace
}  // namespace trainloop
