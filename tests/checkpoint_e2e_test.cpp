// Kills, signals and resumes a real training process (support/checkpoint_worker)
// and checks that the resumed run ends exactly where an uninterrupted one does.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/child_process.h"
#include "support/test_support.h"
#include "trainloop/checkpoint.h"
#include "trainloop/precision.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing_support::read_text;
using testing_support::TempDir;
using Clock = std::chrono::steady_clock;

using testing_support::ChildProcess;
using testing_support::Exit;

// The checkpoint worker writing under `out`, its output in out.worker.log.
class Worker : public ChildProcess {
 public:
  Worker(const fs::path& out, const std::vector<std::string>& extra)
      : ChildProcess(arguments(out, extra), out.string() + ".worker.log") {}

 private:
  static std::vector<std::string> arguments(const fs::path& out, const std::vector<std::string>& extra) {
    std::vector<std::string> args{TRAINLOOP_CHECKPOINT_WORKER, "--out", out.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }
};

// The TensorBoard records without their wall times.
std::string tensorboard_records(const fs::path& out) {
  const auto decoded = testing_support::tfevents_tsv(out / "tensorboard");
  EXPECT_EQ(decoded.status, 0) << "tfevents.py --strict failed on " << out;
  std::istringstream lines(decoded.output);
  std::string records;
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> cells;
    std::istringstream fields(line);
    for (std::string cell; std::getline(fields, cell, '\t');) cells.push_back(cell);
    if (cells.size() != 5) continue;
    records += cells[0] + "\t" + cells[1] + "\t" + cells[2] + "\t" + cells[4] + "\n";
  }
  return records;
}

size_t line_count(const std::string& text) { return std::count(text.begin(), text.end(), '\n'); }

// What an uninterrupted run of the worker in one mode (its extra
// arguments) left: every interrupted run of that mode must reproduce it.
struct Reference {
  double seconds = 0;
  std::string weights;
  std::string log;
  std::string tensorboard;
  std::string said;
};

// The uninterrupted runs, made once per mode for all tests.
class CheckpointE2eTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() { scratch_ = new TempDir(); }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
    references_.clear();
  }

  static fs::path scratch() { return scratch_->path; }

  // The reference of `mode`, run the first time it is asked for. Empty
  // weights when that run failed (the test's assertion says why).
  static const Reference& reference(const std::vector<std::string>& mode) {
    std::string key;
    for (const auto& arg : mode) key += arg + " ";
    auto found = references_.find(key);
    if (found != references_.end()) return found->second;
    Reference& made = references_[key];
    const fs::path out = scratch() / fmt::format("reference{}", references_.size());
    const auto started = Clock::now();
    Worker worker(out, mode);
    const Exit exit = worker.wait();
    made.seconds = std::chrono::duration<double>(Clock::now() - started).count();
    made.said = read_text(out.string() + ".worker.log");
    EXPECT_FALSE(exit.signaled);
    EXPECT_EQ(exit.code, 0) << made.said;
    if (exit.signaled || exit.code != 0) return made;
    made.weights = read_text(out / "final.pt");
    made.log = read_text(out / "log.csv");
    made.tensorboard = tensorboard_records(out);
    return made;
  }

  // Resumes until the run completes; the final weights, log and TensorBoard
  // records must equal the reference's byte for byte.
  static void finish_and_compare(const fs::path& out, const std::vector<std::string>& mode = {}) {
    const Reference& expected = reference(mode);
    ASSERT_FALSE(expected.weights.empty()) << "the uninterrupted reference run failed";
    std::vector<std::string> args = mode;
    args.push_back("--resume");
    Worker worker(out, args);
    const Exit exit = worker.wait();
    ASSERT_FALSE(exit.signaled);
    ASSERT_EQ(exit.code, 0) << read_text(out.string() + ".worker.log");
    EXPECT_TRUE(read_text(out / "final.pt") == expected.weights)
        << "the resumed run's weights differ from the uninterrupted run's";
    EXPECT_EQ(read_text(out / "log.csv"), expected.log);
    EXPECT_EQ(tensorboard_records(out), expected.tensorboard);
  }

  // Waits until the worker's log has at least `rows` lines (it is running).
  static bool wait_for_rows(const fs::path& out, size_t rows, Worker& worker) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline && worker.running()) {
      if (line_count(read_text(out / "log.csv")) >= rows) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

 private:
  static TempDir* scratch_;
  static std::map<std::string, Reference> references_;
};

TempDir* CheckpointE2eTest::scratch_ = nullptr;
std::map<std::string, Reference> CheckpointE2eTest::references_;

bool has_temporary(const fs::path& checkpoints) {
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(checkpoints, error)) {
    if (entry.path().filename().string().rfind(".tmp-", 0) == 0) return true;
  }
  return false;
}

// Kills a worker of `mode` `kills` times, at random moments and (every
// third) while it writes a checkpoint, resuming each time, then lets it
// finish: the weights, log and TensorBoard records equal the reference's.
void kill_and_resume(const fs::path& out, const std::vector<std::string>& mode, int kills_wanted) {
  const Reference& reference = CheckpointE2eTest::reference(mode);
  ASSERT_FALSE(reference.weights.empty()) << "the uninterrupted reference run failed";
  const fs::path checkpoints = out / "checkpoints";
  std::vector<std::string> args = mode;
  args.push_back("--resume");
  // Fixed seed: a failure names a kill sequence that can be replayed.
  std::mt19937 random(20261201);
  // Up to 60% of a whole run: most attempts are killed, not finished.
  std::uniform_real_distribution<double> delay(0.0, std::max(0.2, 0.6 * reference.seconds));
  int kills = 0;
  int during_write = 0;
  int attempts = 0;
  for (; kills < kills_wanted && attempts < 400; ++attempts) {
    Worker worker(out, args);
    // Every third kill waits for a checkpoint being written (its temporary
    // directory exists) and kills then; the others at a random moment.
    const bool aim_at_write = attempts % 3 == 2;
    const auto deadline = Clock::now() + std::chrono::duration<double>(delay(random));
    bool alive = true;
    while (alive) {
      alive = worker.running();
      if (!alive) break;
      if (aim_at_write ? has_temporary(checkpoints) : Clock::now() >= deadline) break;
      if (aim_at_write && Clock::now() >= deadline + std::chrono::seconds(2)) break;
      if (!aim_at_write) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!alive) {
      // It finished before the kill: start over so every kill point counts.
      ASSERT_EQ(worker.wait().code, 0) << read_text(out.string() + ".worker.log");
      fs::remove(out / "final.pt");
      fs::remove_all(out);
      continue;
    }
    worker.signal(SIGKILL);
    const Exit exit = worker.wait();
    if (!exit.signaled) continue;  // it completed in the same instant
    ++kills;
    if (has_temporary(checkpoints)) ++during_write;
  }
  ASSERT_EQ(kills, kills_wanted) << "the worker kept finishing before it could be killed";
  std::printf("killed %d times (%d while a checkpoint was being written) in %d starts\n", kills,
              during_write, attempts);
  EXPECT_GE(during_write, 1) << "no kill landed inside a checkpoint write";
  ::testing::Test::RecordProperty("kills", kills);
  ::testing::Test::RecordProperty("kills_during_checkpoint_write", during_write);
  CheckpointE2eTest::finish_and_compare(out, mode);
}

TEST_F(CheckpointE2eTest, KilledAtRandomMomentsResumesToTheSameWeightsAndLog) {
  kill_and_resume(scratch() / "killed", {}, 24);
}

// Mixed precision with a loss scaler that overflows and backs off again and
// again, and a moving average of the weights that validation uses and the
// final weights are: the scale, its growth count, the skipped updates and
// the average resume exactly.
TEST_F(CheckpointE2eTest, KilledUnderMixedPrecisionWithEmaResumesExactly) {
  std::vector<std::vector<std::string>> modes = {{"--precision", "bf16", "--loss-scaling", "--ema"}};
  if (autocast_supported(torch::kCPU, torch::kHalf)) {
    modes.push_back({"--precision", "fp16", "--loss-scaling", "--ema"});
  }
  for (const auto& mode : modes) {
    SCOPED_TRACE(mode[1]);
    const Reference& reference = CheckpointE2eTest::reference(mode);
    // The reference run really skipped updates (printed by the worker).
    EXPECT_THAT(reference.said, ::testing::ContainsRegex("loss scale [0-9.e+]+, [1-9][0-9]* updates skipped"));
    kill_and_resume(scratch() / ("killed-" + mode[1]), mode, 8);
  }
}

// Signals the worker once its log has `rows` lines; it must finish the batch,
// checkpoint, flush its log, exit with 128 + the signal, and resume exactly.
void interrupt_and_resume(const fs::path& out, int signal_number, size_t rows) {
  Worker worker(out, {"--slow-ms", "5"});
  ASSERT_TRUE(CheckpointE2eTest::wait_for_rows(out, rows, worker));
  worker.signal(signal_number);
  const Exit exit = worker.wait();
  const std::string said = read_text(out.string() + ".worker.log");
  EXPECT_FALSE(exit.signaled);
  EXPECT_EQ(exit.code, 128 + signal_number) << said;
  EXPECT_THAT(said, ::testing::HasSubstr(fmt::format("interrupted by signal {}", signal_number)));
  // The log was flushed up to the checkpoint: a row for every step before it.
  const auto names = checkpoint_names((out / "checkpoints").string());
  ASSERT_FALSE(names.empty());
  const CheckpointInfo newest = verify_checkpoint((out / "checkpoints" / names.back()).string());
  EXPECT_GE(line_count(read_text(out / "log.csv")), static_cast<size_t>(1 + newest.global_step));
  CheckpointE2eTest::finish_and_compare(out);
}

TEST_F(CheckpointE2eTest, SigintFinishesTheBatchSavesAndResumes) {
  interrupt_and_resume(scratch() / "sigint", SIGINT, 40);
}

TEST_F(CheckpointE2eTest, SigtermStopsWithExitCode143AndResumes) {
  interrupt_and_resume(scratch() / "sigterm", SIGTERM, 70);
}

TEST_F(CheckpointE2eTest, SecondSigintEndsTheProcessAtOnce) {
  const fs::path out = scratch() / "twice";
  // Each batch takes 2 s, so the second signal comes while the first waits
  // for the batch to finish.
  Worker worker(out, {"--slow-ms", "2000"});
  ASSERT_TRUE(wait_for_rows(out, 1, worker));
  worker.signal(SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto second = Clock::now();
  worker.signal(SIGINT);
  const Exit exit = worker.wait();
  EXPECT_TRUE(exit.signaled) << "exit code " << exit.code;
  EXPECT_EQ(exit.code, SIGINT);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - second).count(), 1.5);
}

}  // namespace
}  // namespace trainloop
