// Data-parallel training in real processes (support/distributed_worker),
// started with torchrun's environment over 127.0.0.1: two ranks against one
// process with the doubled batch, a rank that leaves, a rank that is killed
// and a restarted job that resumes, a signal on one rank.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/child_process.h"
#include "support/ranks.h"
#include "support/test_support.h"
#include "trainloop/checkpoint.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing_support::free_port;
using testing_support::read_text;
using testing_support::TempDir;
using Clock = std::chrono::steady_clock;

using testing_support::Exit;
using Process = testing_support::ChildProcess;

std::vector<std::string> worker_args(const fs::path& out, const std::vector<std::string>& extra) {
  std::vector<std::string> args{TRAINLOOP_DISTRIBUTED_WORKER, "--out", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// A job of `world` ranks with exactly torchrun's environment contract;
// `per_rank[r]` are extra arguments for rank r only.
std::vector<std::unique_ptr<Process>> start_job(
    int world, int port, const fs::path& out, const std::vector<std::string>& extra,
    const std::map<int, std::vector<std::string>>& per_rank = {}) {
  std::vector<std::unique_ptr<Process>> ranks;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> args = extra;
    if (per_rank.count(rank) != 0) {
      args.insert(args.end(), per_rank.at(rank).begin(), per_rank.at(rank).end());
    }
    const std::map<std::string, std::string> env{
        {"RANK", std::to_string(rank)},        {"WORLD_SIZE", std::to_string(world)},
        {"LOCAL_RANK", std::to_string(rank)},  {"LOCAL_WORLD_SIZE", std::to_string(world)},
        {"MASTER_ADDR", "127.0.0.1"},          {"MASTER_PORT", std::to_string(port)}};
    ranks.push_back(std::make_unique<Process>(
        worker_args(out, args), out.string() + ".rank" + std::to_string(rank) + ".log", env));
  }
  return ranks;
}

// Waits for every rank to complete successfully.
void expect_job_completes(std::vector<std::unique_ptr<Process>>& ranks) {
  for (size_t rank = 0; rank < ranks.size(); ++rank) {
    const auto exit = ranks[rank]->wait_for(std::chrono::seconds(120));
    ASSERT_TRUE(exit.has_value()) << "rank " << rank << " did not finish:\n" << ranks[rank]->log();
    ASSERT_FALSE(exit->signaled) << "rank " << rank << " got signal " << exit->code;
    ASSERT_EQ(exit->code, 0) << "rank " << rank << ":\n" << ranks[rank]->log();
  }
}

// A state dict as save_weights wrote it.
std::map<std::string, torch::Tensor> read_weights(const fs::path& path) {
  std::map<std::string, torch::Tensor> weights;
  if (!fs::exists(path)) return weights;
  for (auto& [name, tensor] : load_tensors(path.string())) weights[name] = tensor;
  return weights;
}

// The largest difference between two state dicts of the same names.
double max_difference(const std::map<std::string, torch::Tensor>& a,
                      const std::map<std::string, torch::Tensor>& b) {
  EXPECT_EQ(a.size(), b.size());
  EXPECT_FALSE(a.empty());
  double largest = 0;
  for (const auto& [name, tensor] : a) {
    if (b.count(name) == 0) {
      ADD_FAILURE() << "no " << name;
      return INFINITY;
    }
    largest = std::max(largest, (tensor - b.at(name)).abs().max().item<double>());
  }
  return largest;
}

// The last row of each (epoch, phase) of a CSV log, without its batch
// column: "step,lr,loss,accuracy" as numbers.
std::map<std::string, std::vector<double>> phase_end_rows(const std::string& csv) {
  std::map<std::string, std::vector<double>> rows;
  std::istringstream lines(csv);
  std::string line;
  std::getline(lines, line);  // header
  while (std::getline(lines, line)) {
    std::vector<std::string> cells;
    std::istringstream fields(line);
    for (std::string cell; std::getline(fields, cell, ',');) cells.push_back(cell);
    if (cells.size() != 7) continue;
    rows[cells[0] + " " + cells[2]] = {std::stod(cells[3]), std::stod(cells[4]),
                                       std::stod(cells[5]), std::stod(cells[6])};
  }
  return rows;
}

size_t training_rows(const std::string& csv) {
  size_t count = 0;
  for (size_t at = 0; (at = csv.find(",train,", at)) != std::string::npos; ++at) ++count;
  return count;
}

// The uninterrupted two-rank run that interrupted ones must reproduce.
class DistributedE2eTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new TempDir();
    const fs::path out = scratch_->path / "reference";
    auto ranks = start_job(2, free_port(), out, {"--checkpoint-steps", "4"});
    expect_job_completes(ranks);
    reference_weights_ = read_weights(out / "final.rank0.pt");
    reference_log_ = read_text(out / "log.rank0.csv");
    reference_checkpoints_ = out / "checkpoints";
  }
  // gtest reports the tests of a suite whose SetUpTestSuite failed as
  // skipped: fail each instead.
  void SetUp() override {
    ASSERT_FALSE(reference_weights_.empty()) << "the uninterrupted reference job failed (see above)";
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }

  // Restarts the job with --resume and checks it ends as the reference did.
  static void resume_and_compare(const fs::path& out, int port) {
    auto ranks = start_job(2, port, out, {"--checkpoint-steps", "4", "--resume"});
    expect_job_completes(ranks);
    ASSERT_FALSE(reference_weights_.empty());
    EXPECT_EQ(max_difference(read_weights(out / "final.rank0.pt"), reference_weights_), 0.0)
        << "the resumed job's weights differ from the uninterrupted job's";
    EXPECT_EQ(max_difference(read_weights(out / "final.rank1.pt"), reference_weights_), 0.0);
    EXPECT_EQ(read_text(out / "log.rank0.csv"), reference_log_);
  }

  static TempDir* scratch_;
  static std::map<std::string, torch::Tensor> reference_weights_;
  static std::string reference_log_;
  static fs::path reference_checkpoints_;
};

TempDir* DistributedE2eTest::scratch_ = nullptr;
std::map<std::string, torch::Tensor> DistributedE2eTest::reference_weights_;
std::string DistributedE2eTest::reference_log_;
fs::path DistributedE2eTest::reference_checkpoints_;

TEST_F(DistributedE2eTest, TwoRanksEqualOneProcessWithTheDoubledBatch) {
  const fs::path single = scratch_->path / "single";
  Process one(worker_args(single, {"--batch", "32"}), single.string() + ".log");
  const auto exit = one.wait_for(std::chrono::seconds(120));
  ASSERT_TRUE(exit.has_value() && !exit->signaled && exit->code == 0) << one.log();

  // Several buckets, all-reduced while backward runs.
  const fs::path job = scratch_->path / "job";
  auto ranks = start_job(2, free_port(), job, {"--batch", "16", "--bucket-bytes", "512"});
  expect_job_completes(ranks);

  const auto whole = read_weights(single / "final.rank0.pt");
  EXPECT_LT(max_difference(read_weights(job / "final.rank0.pt"), whole), 1e-5);
  EXPECT_EQ(max_difference(read_weights(job / "final.rank1.pt"), read_weights(job / "final.rank0.pt")),
            0.0)
      << "the ranks' updates differ";

  // Rank 0 alone writes logs.
  EXPECT_TRUE(fs::exists(job / "log.rank0.csv"));
  EXPECT_TRUE(fs::exists(job / "tensorboard.rank0"));
  EXPECT_FALSE(fs::exists(job / "log.rank1.csv"));
  EXPECT_FALSE(fs::exists(job / "tensorboard.rank1"));

  // Each phase's last row: the values over every rank's batches.
  const auto expected = phase_end_rows(read_text(single / "log.rank0.csv"));
  const auto actual = phase_end_rows(read_text(job / "log.rank0.csv"));
  ASSERT_EQ(expected.size(), 8u);  // 4 epochs, training and validation
  for (const auto& [key, values] : expected) {
    ASSERT_EQ(actual.count(key), 1u) << key;
    for (size_t i = 0; i < values.size(); ++i) {
      EXPECT_NEAR(actual.at(key)[i], values[i], 1e-5)
          << key << ", column " << std::vector<std::string>{"step", "lr", "loss", "accuracy"}[i];
    }
  }
}

TEST_F(DistributedE2eTest, RankThatLeavesEarlyMakesTheOtherFailWithinTheTimeout) {
  const fs::path out = scratch_->path / "leaves";
  auto ranks = start_job(2, free_port(), out, {"--timeout-ms", "3000"}, {{1, {"--exit-at-step", "3"}}});
  const auto left = ranks[1]->wait_for(std::chrono::seconds(60));
  ASSERT_TRUE(left.has_value()) << ranks[1]->log();
  EXPECT_EQ(left->code, 3) << ranks[1]->log();
  const auto gone = Clock::now();
  const auto stopped = ranks[0]->wait_for(std::chrono::seconds(20));
  ASSERT_TRUE(stopped.has_value()) << "rank 0 still runs 20 s after rank 1 left";
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - gone).count(), 3.0 + 5.0);
  EXPECT_FALSE(stopped->signaled);
  EXPECT_EQ(stopped->code, 1);
  EXPECT_THAT(ranks[0]->log(), HasSubstr("failed on rank 0 of 2: a rank exited, or did not take "
                                         "part within the timeout of 3 s"));
}

TEST_F(DistributedE2eTest, KilledRankStopsTheOtherAndTheRestartedJobResumes) {
  const fs::path out = scratch_->path / "killed";
  const int port = free_port();
  {
    auto ranks = start_job(2, port, out,
                           {"--checkpoint-steps", "4", "--slow-ms", "15", "--timeout-ms", "3000"});
    // Killed in the second epoch, some batches after a checkpoint.
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline && ranks[0]->running() &&
           training_rows(read_text(out / "log.rank0.csv")) < 22) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_TRUE(ranks[0]->running()) << ranks[0]->log();
    ranks[1]->signal(SIGKILL);
    const auto killed = Clock::now();
    const auto stopped = ranks[0]->wait_for(std::chrono::seconds(20));
    ASSERT_TRUE(stopped.has_value()) << "rank 0 still runs 20 s after rank 1 was killed";
    EXPECT_LT(std::chrono::duration<double>(Clock::now() - killed).count(), 3.0 + 5.0);
    EXPECT_EQ(stopped->code, 1);
    EXPECT_THAT(ranks[0]->log(), HasSubstr("distributed: "));
    EXPECT_THAT(ranks[0]->log(), HasSubstr("failed on rank 0 of 2"));
    EXPECT_FALSE(fs::exists(out / "final.rank0.pt"));
  }
  ASSERT_FALSE(checkpoint_names((out / "checkpoints").string()).empty());
  // As torchrun --max-restarts does: every rank again, same address.
  resume_and_compare(out, port);
}

TEST_F(DistributedE2eTest, SignalOnOneRankStopsBothAfterTheSameUpdate) {
  const fs::path out = scratch_->path / "signal";
  const int port = free_port();
  {
    auto ranks = start_job(2, port, out, {"--checkpoint-steps", "4", "--slow-ms", "15"});
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline && ranks[0]->running() &&
           training_rows(read_text(out / "log.rank0.csv")) < 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ranks[1]->signal(SIGINT);  // not to rank 0, which writes the checkpoint
    std::vector<std::string> lines;
    for (size_t rank = 0; rank < 2; ++rank) {
      const auto exit = ranks[rank]->wait_for(std::chrono::seconds(30));
      ASSERT_TRUE(exit.has_value()) << "rank " << rank << ":\n" << ranks[rank]->log();
      EXPECT_EQ(exit->code, 128 + SIGINT) << ranks[rank]->log();
      const std::string log = ranks[rank]->log();
      const size_t at = log.find("interrupted by signal 2 at step ");
      ASSERT_NE(at, std::string::npos) << log;
      lines.push_back(log.substr(at, log.find('\n', at) - at));
    }
    EXPECT_EQ(lines[0], lines[1]) << "the ranks stopped after different updates";
  }
  resume_and_compare(out, port);
}

TEST_F(DistributedE2eTest, ResumingWithAnotherWorldSizeFails) {
  const fs::path out = scratch_->path / "other_world";
  fs::create_directories(out);
  fs::copy(reference_checkpoints_, out / "checkpoints", fs::copy_options::recursive);
  Process one(worker_args(out, {"--resume"}), out.string() + ".log");
  const auto exit = one.wait_for(std::chrono::seconds(60));
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->code, 1);
  EXPECT_THAT(one.log(), HasSubstr("written by a fit of 2 processes, this one has 1; resume with "
                                   "WORLD_SIZE=2"));
}

}  // namespace
}  // namespace trainloop
