#include "trainloop/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "../examples/lenet.h"
#include "../src/io/state_dict.h"
#include "support/test_support.h"
#include "trainloop/callbacks/checkpoint.h"
#include "trainloop/callbacks/csv_logger.h"
#include "trainloop/callbacks/early_stopping.h"
#include "trainloop/callbacks/lr_scheduler.h"
#include "trainloop/callbacks/tensorboard.h"
#include "trainloop/error.h"
#include "trainloop/output_lock.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::Not;
using testing::ThrowsMessage;
using testing_support::read_text;
using testing_support::TempDir;

// Dropout makes the result depend on the generators' state too.
struct NetImpl : torch::nn::Module {
  explicit NetImpl(int64_t hidden = 16)
      : fc1(register_module("fc1", torch::nn::Linear(4, hidden))),
        dropout(register_module("dropout", torch::nn::Dropout(0.3))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, 3))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(dropout(torch::relu(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::Dropout dropout;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Net);

data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  torch::Tensor x = torch::randn({size, 4});
  return {x, (x.sum(1) > 0).to(torch::kLong) + (x.narrow(1, 0, 1).squeeze(1) > 1).to(torch::kLong)};
}

// Stops the fit (as a kill would, but in-process) after `step` updates.
std::shared_ptr<Callback> stop_after(int64_t step) {
  return callbacks::lambda(
      [step](Event event, TrainingLoop& loop) {
        if (event == Event::batch_end && loop.state().global_step == step) {
          loop.state().stop_requested = true;
        }
      },
      "stop_after");
}

// One complete set-up: model, optimizer and a loop with logs and checkpoints.
struct TrainingRun {
  Net model;
  torch::optim::Adam optimizer;
  std::shared_ptr<callbacks::CheckpointCallback> checkpoint;
  TrainingLoop loop;

  TrainingRun(const fs::path& dir, uint64_t init_seed, std::vector<std::shared_ptr<Callback>> extra = {},
      int64_t hidden = 16, callbacks::CheckpointOptions options = callbacks::CheckpointOptions()
                                                                       .every_n_steps(1)
                                                                       .keep_last(2))
      : model((torch::manual_seed(init_seed), Net(hidden))),
        optimizer(model->parameters(), torch::optim::AdamOptions(0.01)),
        checkpoint(callbacks::checkpoint((dir / "checkpoints").string(), options)),
        loop(data::Epochs(make_dataset(60, 1), 8).seed(5), data::Batches(make_dataset(20, 2), 8),
             optimizer, losses::cross_entropy, {metrics::accuracy()},
             make_callbacks(dir, checkpoint, std::move(extra))) {
    loop.handle_signals(false);
  }

  static std::vector<std::shared_ptr<Callback>> make_callbacks(
      const fs::path& dir, std::shared_ptr<Callback> checkpoint,
      std::vector<std::shared_ptr<Callback>> extra) {
    // The checkpoint first: it must still run last (its order).
    std::vector<std::shared_ptr<Callback>> all{
        checkpoint, callbacks::csv_logger((dir / "log.csv").string()),
        callbacks::tensorboard(callbacks::TensorBoardOptions()
                                   .log_dir((dir / "tensorboard").string())
                                   .run_name("run")
                                   .log_every_n_steps(2)),
        callbacks::lr_scheduler(schedules::warmup_cosine(0.02, 5)),
        callbacks::early_stopping(callbacks::EarlyStoppingOptions("val_loss").patience(50))};
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  }

  std::vector<torch::Tensor> weights() {
    std::vector<torch::Tensor> out;
    for (const auto& p : model->parameters()) out.push_back(p.detach().clone());
    return out;
  }
};

void expect_bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i << " differs";
  }
}

std::string tensorboard_without_times(const fs::path& dir) {
  const auto decoded = testing_support::tfevents_tsv(dir / "tensorboard");
  EXPECT_EQ(decoded.status, 0);
  std::string out;
  std::istringstream lines(decoded.output);
  for (std::string line; std::getline(lines, line);) {
    const auto first = line.find('\t', line.find('\t', line.find('\t') + 1) + 1);
    const auto second = line.find('\t', first + 1);
    out += line.substr(0, first) + line.substr(second) + "\n";
  }
  return out;
}

constexpr int64_t kEpochs = 3;  // 8 batches each

class CheckpointTest : public testing::Test {
 protected:
  // Fits uninterrupted, then again cancelled after `stop_batch` batches and
  // resumed into a differently initialized model: the resume must start from
  // `checkpoint` and end with the same weights, history and logs.
  void expect_resume_equals_uninterrupted(int64_t stop_batch, const std::string& checkpoint) {
    TrainingRun reference(scratch.path / "reference", 11);
    ASSERT_EQ(reference.loop.fit(reference.model, kEpochs), FitStatus::completed);
    const fs::path dir = scratch.path / "resumed";
    {
      TrainingRun first(dir, 11, {stop_after(stop_batch)});
      EXPECT_EQ(first.loop.fit(first.model, kEpochs), FitStatus::cancelled);
    }
    // A different initialization: everything must come from the checkpoint.
    TrainingRun second(dir, 99);
    ASSERT_EQ(second.loop.fit(second.model, kEpochs, torch::kCPU, (dir / "checkpoints").string()),
              FitStatus::completed);
    EXPECT_EQ(second.loop.state().resumed_from, (dir / "checkpoints" / checkpoint).string());
    expect_bitwise_equal(second.weights(), reference.weights());
    EXPECT_EQ(second.loop.state().history, reference.loop.state().history);
    EXPECT_EQ(read_text(dir / "log.csv"), read_text(scratch.path / "reference" / "log.csv"));
    EXPECT_EQ(tensorboard_without_times(dir), tensorboard_without_times(scratch.path / "reference"));
  }

  TempDir scratch;
};

TEST_F(CheckpointTest, ResumeInsideAnEpochEqualsTheUninterruptedFitBitForBit) {
  expect_resume_equals_uninterrupted(13, "epoch0001-batch000005");
}

// Checkpointed after the epoch's last training batch, before validation:
// the resumed validation must see the learning rate the original one saw
// (the schedule once set the next step's rate at training_start; found by
// checkpoint_e2e_test's random kills).
TEST_F(CheckpointTest, ResumeAfterTheLastTrainingBatchEqualsTheUninterruptedFit) {
  expect_resume_equals_uninterrupted(8, "epoch0000-batch000008");
}

TEST_F(CheckpointTest, ResumeAtAnEpochEndEqualsTheUninterruptedFit) {
  TrainingRun reference(scratch.path / "reference", 11);
  reference.loop.fit(reference.model, kEpochs);
  const fs::path dir = scratch.path / "resumed";
  {
    TrainingRun first(dir, 11, {stop_after(20)}, 16,
              callbacks::CheckpointOptions().every_n_epochs(1).on_interrupt(false));
    first.loop.fit(first.model, kEpochs);
    // The cut third epoch left no checkpoint; the second's end did.
    EXPECT_EQ(checkpoint_names((dir / "checkpoints").string()),
              std::vector<std::string>({"epoch0001-batch000000", "epoch0002-batch000000"}));
  }
  TrainingRun second(dir, 99);
  second.loop.fit(second.model, kEpochs, torch::kCPU, (dir / "checkpoints").string());
  expect_bitwise_equal(second.weights(), reference.weights());
  EXPECT_EQ(read_text(dir / "log.csv"), read_text(scratch.path / "reference" / "log.csv"));
}

TEST_F(CheckpointTest, ManifestDescribesTheCheckpoint) {
  TrainingRun run(scratch.path, 11, {stop_after(10)}, 16,
          callbacks::CheckpointOptions().every_n_steps(5).monitor("val_loss"));
  run.loop.fit(run.model, kEpochs);
  const std::string path = (scratch.path / "checkpoints" / "epoch0001-batch000002").string();
  const CheckpointInfo info = verify_checkpoint(path);
  EXPECT_EQ(info.resume.epoch, 1);
  EXPECT_EQ(info.resume.batch, 2);
  EXPECT_EQ(info.global_step, 10);
  EXPECT_EQ(info.training_batches, 8);
  const auto manifest = nlohmann::json::parse(read_text(fs::path(path) / "manifest.json"));
  EXPECT_EQ(manifest["format"], kCheckpointFormat);
  EXPECT_EQ(manifest["history"].size(), 1u);
  EXPECT_EQ(manifest["files"]["model.pt"]["bytes"], fs::file_size(fs::path(path) / "model.pt"));
  EXPECT_EQ(manifest["callbacks"].size(), 6u);
  EXPECT_EQ(run.checkpoint->write_count(), 3);  // steps 5, 10 and the first epoch's end
  EXPECT_GT(run.checkpoint->last_write_seconds(), 0);
}

TEST_F(CheckpointTest, KeepsTheLastKAndTheBest) {
  // A maximized loss is "best" only at the first epoch, so that one stays.
  TrainingRun run(scratch.path, 11, {}, 16,
          callbacks::CheckpointOptions().keep_last(2).monitor("loss").mode(callbacks::Mode::max));
  run.loop.fit(run.model, 5);
  const auto& history = run.loop.state().history;
  ASSERT_EQ(history.size(), 5u);
  size_t best_epoch = 0;  // the first of equal values, as "improved" is strict
  for (size_t e = 1; e < history.size(); ++e) {
    if (history[e].at("loss") > history[best_epoch].at("loss")) best_epoch = e;
  }
  const std::string best = run.checkpoint->best_path();
  EXPECT_EQ(fs::path(best).filename(), checkpoint_name({static_cast<int64_t>(best_epoch) + 1, 0}));
  std::vector<std::string> expected;
  if (best_epoch < 3) expected.push_back(fs::path(best).filename().string());
  expected.push_back("epoch0004-batch000000");
  expected.push_back("epoch0005-batch000000");
  EXPECT_EQ(checkpoint_names((scratch.path / "checkpoints").string()), expected);
  EXPECT_NEAR(*verify_checkpoint(best).monitor_value, history[best_epoch].at("loss"), 1e-12);
}

// Flips one byte in the middle of a file.
void corrupt(const fs::path& file) {
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  stream.seekg(static_cast<std::streamoff>(fs::file_size(file) / 2));
  const char c = static_cast<char>(stream.peek());
  stream.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
  stream.put(static_cast<char>(c ^ 0x5a));
}

TEST_F(CheckpointTest, CorruptedOrTruncatedFilesAreNamed) {
  TrainingRun run(scratch.path, 11, {stop_after(4)});
  run.loop.fit(run.model, kEpochs);
  const fs::path newest = scratch.path / "checkpoints" / "epoch0000-batch000004";
  corrupt(newest / "state.pt");
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr((newest / "state.pt").string() + ": CRC-32")));
  fs::resize_file(newest / "model.pt", 100);
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr((newest / "model.pt").string() + ": 100 bytes, the manifest says")));
  // Format 2 kept callback states under other keys (before they came from
  // the callbacks' options).
  std::ofstream(newest / "manifest.json") << "{\"format\": 2}";
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr("checkpoint format 2, this build reads 3")));
  std::ofstream(newest / "manifest.json")
      << "{\"format\": 3, \"id\": \"0123456789abcdef\", \"resume\": {\"epoch\": -3}}";
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr("field \"resume.epoch\": expected an integer >= 0")));
}

// The manifest of `checkpoint`, as JSON, and written back with a correct
// checksum (as a forger who knows the format would).
nlohmann::json read_manifest(const fs::path& checkpoint) {
  return nlohmann::json::parse(read_text(checkpoint / "manifest.json"));
}

void write_manifest_with_checksum(const fs::path& checkpoint, nlohmann::json manifest) {
  manifest.erase("checksum");
  const std::string text = manifest.dump();
  const uLong crc = crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(text.data()),
                          static_cast<uInt>(text.size()));
  manifest["checksum"] = fmt::format("crc32:{:08x}", crc);
  std::ofstream(checkpoint / "manifest.json") << manifest.dump(1);
}

TEST_F(CheckpointTest, AOneByteChangeOfTheManifestIsDetected) {
  TrainingRun run(scratch.path, 11, {stop_after(4)});
  run.loop.fit(run.model, kEpochs);
  const fs::path newest = scratch.path / "checkpoints" / "epoch0000-batch000004";
  std::string text = read_text(newest / "manifest.json");
  const size_t at = text.find("\"global_step\": 4");
  ASSERT_NE(at, std::string::npos);
  text[at + 15] = '3';
  std::ofstream(newest / "manifest.json") << text;
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr((newest / "manifest.json").string() +
                                             ": its checksum crc32:")));
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr("the manifest was changed after it was written")));
  // The checksum itself must be there.
  auto manifest = read_manifest(newest);
  manifest.erase("checksum");
  std::ofstream(newest / "manifest.json") << manifest.dump(1);
  EXPECT_THAT([&] { verify_checkpoint(newest.string()); },
              ThrowsMessage<Error>(HasSubstr("field \"checksum\" is missing")));
}

TEST_F(CheckpointTest, ACheckpointMadeOfPartsOfOthersIsRejected) {
  TrainingRun run(scratch.path, 11, {stop_after(4)});
  run.loop.fit(run.model, kEpochs);
  const fs::path dir = scratch.path / "checkpoints";
  const fs::path three = dir / "epoch0000-batch000003";
  const fs::path four = dir / "epoch0000-batch000004";
  const auto manifest_of_four = read_manifest(four);
  fs::copy_file(four / "model.pt", scratch.path / "model-of-four.pt");
  // Another checkpoint's weights, with their size and CRC in a manifest
  // whose checksum no longer fits.
  {
    auto manifest = read_manifest(four);
    manifest["files"]["model.pt"] = read_manifest(three)["files"]["model.pt"];
    std::ofstream(four / "manifest.json") << manifest.dump(1);
    fs::copy_file(three / "model.pt", four / "model.pt", fs::copy_options::overwrite_existing);
  }
  EXPECT_THAT([&] { verify_checkpoint(four.string()); },
              ThrowsMessage<Error>(HasSubstr("the manifest was changed after it was written")));
  // A whole manifest of another checkpoint: the directory's name disagrees.
  fs::copy_file(three / "manifest.json", four / "manifest.json", fs::copy_options::overwrite_existing);
  EXPECT_THAT([&] { verify_checkpoint(four.string()); },
              ThrowsMessage<Error>(HasSubstr(four.string() + ": the directory's name says epoch 0 "
                                             "batch 4, its manifest says epoch 0 batch 3")));
  // A forged manifest that takes in another checkpoint's state.pt: state.pt
  // names the checkpoint it belongs to.
  {
    fs::copy_file(scratch.path / "model-of-four.pt", four / "model.pt",
                  fs::copy_options::overwrite_existing);
    fs::copy_file(three / "state.pt", four / "state.pt", fs::copy_options::overwrite_existing);
    auto manifest = manifest_of_four;
    manifest["files"]["state.pt"] = read_manifest(three)["files"]["state.pt"];
    write_manifest_with_checksum(four, manifest);
  }
  EXPECT_THAT([&] { verify_checkpoint(four.string()); },
              ThrowsMessage<Error>(HasSubstr((four / "state.pt").string() +
                                             ": belongs to another checkpoint")));
  // And resuming from the directory falls back to the one before.
  TrainingRun second(scratch.path, 11);
  testing::internal::CaptureStderr();
  second.loop.fit(second.model, kEpochs, torch::kCPU, dir.string());
  EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("resuming from " + three.string()));
}

TEST_F(CheckpointTest, InvalidCheckpointsAreReportedOnceAndNeverPushOutValidOnes) {
  const fs::path dir = scratch.path / "checkpoints";
  // Stray directories named later than anything this fit writes: empty ones,
  // and one with a corrupt manifest.
  for (int i = 0; i < 200; ++i) fs::create_directories(dir / checkpoint_name({9000 + i, 0}));
  fs::create_directories(dir / "epoch9999-batch000000");
  std::ofstream(dir / "epoch9999-batch000000" / "manifest.json") << "{";
  testing::internal::CaptureStderr();
  TrainingRun run(scratch.path, 11, {stop_after(4)});
  run.loop.fit(run.model, kEpochs);
  const std::string said = testing::internal::GetCapturedStderr();
  // keep_last(2) kept the two newest valid checkpoints, the strays untouched.
  const auto names = checkpoint_names(dir.string());
  ASSERT_EQ(names.size(), 203u);
  EXPECT_EQ(names[0], "epoch0000-batch000003");
  EXPECT_EQ(names[1], "epoch0000-batch000004");
  EXPECT_EQ(run.checkpoint->last_path(), (dir / "epoch0000-batch000004").string());
  EXPECT_NO_THROW(verify_checkpoint(run.checkpoint->last_path()));
  // One line for all 201, however many checkpoints were written.
  EXPECT_THAT(said, HasSubstr(dir.string() + ": 201 directories named like checkpoints are not "
                              "valid; left alone and not counted among the 2 kept"));
  EXPECT_EQ(std::count(said.begin(), said.end(), '\n'), 1) << said;
  // A resume from the directory: one line for the invalid ones, then the
  // newest valid one.
  TrainingRun second(scratch.path, 11, {stop_after(5)});
  testing::internal::CaptureStderr();
  second.loop.fit(second.model, kEpochs, torch::kCPU, dir.string());
  const std::string resumed = testing::internal::GetCapturedStderr();
  EXPECT_THAT(resumed, HasSubstr("skipped 200 more invalid checkpoints in " + dir.string()));
  EXPECT_THAT(resumed, HasSubstr("resuming from " + (dir / "epoch0000-batch000004").string()));
  EXPECT_LE(std::count(resumed.begin(), resumed.end(), '\n'), 4) << resumed;
}

TEST_F(CheckpointTest, ASecondProcessWritingTheSameRunFailsAtOnceAndLosesNothing) {
  {
    TrainingRun first(scratch.path, 11, {stop_after(2)});
    first.loop.fit(first.model, kEpochs);
  }
  const std::string log_before = read_text(scratch.path / "log.csv");
  const auto names_before = checkpoint_names((scratch.path / "checkpoints").string());
  // Another process holds the checkpoint directory, as a running fit does.
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t holder = ::fork();
  if (holder == 0) {
    OutputLock lock((scratch.path / "checkpoints").string(), OutputKind::directory);
    (void)!::write(ready[1], "y", 1);
    ::pause();
    ::_exit(0);
  }
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  TrainingRun second(scratch.path, 11);
  EXPECT_THAT([&] {
    second.loop.fit(second.model, kEpochs, torch::kCPU, (scratch.path / "checkpoints").string());
  }, ThrowsMessage<Error>(HasSubstr((scratch.path / "checkpoints").string() +
                                    ": in use by another process (PID " + std::to_string(holder) +
                                    ")")));
  ::kill(holder, SIGKILL);
  ::waitpid(holder, nullptr, 0);
  EXPECT_EQ(read_text(scratch.path / "log.csv"), log_before);
  EXPECT_EQ(checkpoint_names((scratch.path / "checkpoints").string()), names_before);
}

TEST_F(CheckpointTest, AFifoInPlaceOfACheckpointFileIsRefusedWithoutBlocking) {
  TrainingRun run(scratch.path, 11, {stop_after(2)});
  run.loop.fit(run.model, kEpochs);
  const fs::path newest = scratch.path / "checkpoints" / "epoch0000-batch000002";
  for (const char* name : {"manifest.json", "model.pt"}) {
    const fs::path saved = scratch.path / "saved";
    fs::rename(newest / name, saved);
    ASSERT_EQ(::mkfifo((newest / name).c_str(), 0600), 0);
    const std::string said = testing_support::error_reading_fifo(
        newest / name, [&] { verify_checkpoint(newest.string()); });
    EXPECT_THAT(said, HasSubstr((newest / name).string() + ": not a regular file (a FIFO)"));
    fs::remove(newest / name);
    fs::rename(saved, newest / name);
  }
}

TEST_F(CheckpointTest, FitStartRemovesOnlyTemporaryDirectoriesOfProcessesThatAreGone) {
  const fs::path dir = scratch.path / "checkpoints";
  // A process that ran and is gone, and one that still runs.
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ::waitpid(gone, nullptr, 0);
  const pid_t alive = ::fork();
  if (alive == 0) {
    ::pause();
    ::_exit(0);
  }
  const fs::path abandoned = dir / (".tmp-epoch0000-batch000001-" + std::to_string(gone));
  const fs::path in_use = dir / (".tmp-epoch0000-batch000001-" + std::to_string(alive));
  const fs::path old_abandoned = dir / (".old-epoch0000-batch000001-" + std::to_string(gone));
  for (const auto& path : {abandoned, in_use, old_abandoned}) fs::create_directories(path);
  TrainingRun run(scratch.path, 11, {stop_after(1)});
  run.loop.fit(run.model, kEpochs);
  ::kill(alive, SIGKILL);
  ::waitpid(alive, nullptr, 0);
  EXPECT_FALSE(fs::exists(abandoned));
  EXPECT_FALSE(fs::exists(old_abandoned));
  EXPECT_TRUE(fs::exists(in_use));
}

TEST_F(CheckpointTest, ResumeFallsBackToTheNewestValidCheckpointAndSaysSo) {
  TrainingRun reference(scratch.path / "reference", 11);
  reference.loop.fit(reference.model, kEpochs);
  const fs::path dir = scratch.path / "resumed";
  {
    TrainingRun first(dir, 11, {stop_after(6)});
    first.loop.fit(first.model, kEpochs);
  }
  corrupt(dir / "checkpoints" / "epoch0000-batch000006" / "model.pt");
  TrainingRun second(dir, 99);
  testing::internal::CaptureStderr();
  second.loop.fit(second.model, kEpochs, torch::kCPU, (dir / "checkpoints").string());
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_THAT(said, HasSubstr("skipping invalid checkpoint " +
                              (dir / "checkpoints" / "epoch0000-batch000006").string()));
  EXPECT_THAT(said, HasSubstr("resuming from " +
                              (dir / "checkpoints" / "epoch0000-batch000005").string()));
  expect_bitwise_equal(second.weights(), reference.weights());
  EXPECT_EQ(read_text(dir / "log.csv"), read_text(scratch.path / "reference" / "log.csv"));
}

// Records whether fit_start ever ran.
struct StartWatcher : Callback {
  bool started = false;
  void on_event(Event event, TrainingLoop&) override { started |= event == Event::fit_start; }
  std::string state_key() const override { return "start_watcher"; }
};

TEST_F(CheckpointTest, AMismatchedModelFailsBeforeFitStartNamingTheParameter) {
  {
    TrainingRun first(scratch.path, 11, {stop_after(3)});
    first.loop.fit(first.model, kEpochs);
  }
  auto watcher = std::make_shared<StartWatcher>();
  TrainingRun wider(scratch.path, 11, {watcher}, /*hidden=*/17);
  EXPECT_THAT(
      [&] { wider.loop.fit(wider.model, kEpochs, torch::kCPU, (scratch.path / "checkpoints").string()); },
      ThrowsMessage<Error>(HasSubstr("model.pt: \"fc1.weight\" has shape [16, 4], the model's has [17, 4]")));
  EXPECT_FALSE(watcher->started);
}

TEST_F(CheckpointTest, ResumingWithOtherDataMetricsOrLogsFailsSayingWhat) {
  {
    TrainingRun first(scratch.path, 11, {stop_after(3)});
    first.loop.fit(first.model, kEpochs);
  }
  const std::string checkpoints = (scratch.path / "checkpoints").string();
  torch::manual_seed(11);
  Net model;
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(0.01));
  // 60 examples in batches of 7: 9 batches, not 8.
  TrainingLoop other_batches(data::Epochs(make_dataset(60, 1), 7), nullptr, optimizer,
                             losses::cross_entropy, {metrics::accuracy()});
  EXPECT_THAT([&] { other_batches.fit(model, kEpochs, torch::kCPU, checkpoints); },
              ThrowsMessage<Error>(HasSubstr("saved with 8 training batches per epoch, this "
                                             "loop's data has 9")));
  TrainingLoop other_metrics(data::Epochs(make_dataset(60, 1), 8), nullptr, optimizer,
                             losses::cross_entropy, {});
  EXPECT_THAT([&] { other_metrics.fit(model, kEpochs, torch::kCPU, checkpoints); },
              ThrowsMessage<Error>(HasSubstr("saved with metrics [loss, accuracy], this loop has [loss]")));
  // A log that lost what it had when the checkpoint was taken.
  fs::resize_file(scratch.path / "log.csv", 60);
  TrainingRun second(scratch.path, 11);
  EXPECT_THAT([&] { second.loop.fit(second.model, kEpochs, torch::kCPU, checkpoints); },
              // 61: the logger first ends the cut line it found.
              ThrowsMessage<Error>(HasSubstr("log.csv: 61 bytes, but the checkpoint was taken when it had")));
}

TEST_F(CheckpointTest, EveryCheckpointInvalidFailsNamingTheNewestProblem) {
  {
    TrainingRun first(scratch.path, 11, {stop_after(3)});
    first.loop.fit(first.model, kEpochs);
  }
  for (const auto& name : checkpoint_names((scratch.path / "checkpoints").string())) {
    fs::remove(scratch.path / "checkpoints" / name / "optimizer.pt");
  }
  TrainingRun second(scratch.path, 11);
  testing::internal::CaptureStderr();
  EXPECT_THAT([&] { second.loop.fit(second.model, kEpochs, torch::kCPU, (scratch.path / "checkpoints").string()); },
              ThrowsMessage<Error>(HasSubstr("cannot resume: none of its 2 checkpoints is valid; "
                                             "the newest: " +
                                             (scratch.path / "checkpoints" / "epoch0000-batch000003" /
                                              "optimizer.pt").string())));
  testing::internal::GetCapturedStderr();
}

TEST_F(CheckpointTest, AResumePathThatDoesNotExistYetStartsAFreshFitSayingSo) {
  // So a program may always pass the directory its checkpoints go to.
  TrainingRun run(scratch.path, 11);
  const std::string missing = (scratch.path / "elsewhere").string();
  testing::internal::CaptureStderr();
  EXPECT_EQ(run.loop.fit(run.model, 1, torch::kCPU, missing), FitStatus::completed);
  EXPECT_THAT(testing::internal::GetCapturedStderr(),
              HasSubstr(missing + " does not exist yet, starting from the beginning"));
  EXPECT_TRUE(run.loop.state().resumed_from.empty());
  EXPECT_FALSE(checkpoint_names((scratch.path / "checkpoints").string()).empty());
}

TEST_F(CheckpointTest, AnEmptyCheckpointDirectoryStartsAFreshFit) {
  fs::create_directories(scratch.path / "checkpoints");
  TrainingRun run(scratch.path, 11);
  testing::internal::CaptureStderr();
  EXPECT_EQ(run.loop.fit(run.model, 1, torch::kCPU, (scratch.path / "checkpoints").string()),
            FitStatus::completed);
  EXPECT_THAT(testing::internal::GetCapturedStderr(), HasSubstr("starting from the beginning"));
  EXPECT_TRUE(run.loop.state().resumed_from.empty());
}

// The directory is the options' required argument, as other factories take
// theirs; the older form with it apart is the same callback.
TEST_F(CheckpointTest, TheDirectoryComesInTheOptionsOrApart) {
  const std::string dir = (scratch.path / "c").string();
  auto in_options = callbacks::checkpoint(callbacks::CheckpointOptions(dir).keep_last(1));
  auto apart = callbacks::checkpoint(dir, callbacks::CheckpointOptions().keep_last(1));
  EXPECT_EQ(in_options->state_key(), "checkpoint:" + dir);
  EXPECT_EQ(apart->state_key(), in_options->state_key());
  EXPECT_EQ(callbacks::checkpoint(dir)->outputs().front().path, dir);
  EXPECT_THAT([] { callbacks::checkpoint(callbacks::CheckpointOptions()); },
              ThrowsMessage<Error>(HasSubstr("checkpoint: the directory is empty")));
}

TEST_F(CheckpointTest, AnUnwritableDirectoryFailsAtFitStart) {
  std::ofstream(scratch.path / "file") << "not a directory";
  const fs::path inside_a_file = scratch.path / "file" / "checkpoints";
  torch::manual_seed(1);
  Net model;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  auto watcher = std::make_shared<StartWatcher>();
  TrainingLoop loop(data::Epochs(make_dataset(16, 1), 8), nullptr, optimizer, losses::cross_entropy,
                    {}, {callbacks::checkpoint(inside_a_file.string()), watcher});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr(inside_a_file.string() +
                                             ": cannot create the directory")));
  EXPECT_FALSE(watcher->started);
}

// Two CSV loggers, a second TensorBoard run and two lambdas of one name
// beside the checkpoint: each logger's state is kept under a key from its
// options, and the resumed fit writes every log as the uninterrupted one.
TEST_F(CheckpointTest, TwoLoggersOfAKindAndTwoLambdasResumeBitForBit) {
  const auto extras = [](const fs::path& dir) {
    return std::vector<std::shared_ptr<Callback>>{
        callbacks::csv_logger(callbacks::CsvLoggerOptions((dir / "every3.csv").string())
                                  .every_n_batches(3)),
        callbacks::tensorboard(callbacks::TensorBoardOptions()
                                   .log_dir((dir / "tensorboard").string())
                                   .run_name("second")
                                   .log_every_n_steps(3)),
        callbacks::lambda([](Event, TrainingLoop&) {}),
        callbacks::lambda([](Event, TrainingLoop&) {})};
  };
  TrainingRun reference(scratch.path / "reference", 11, extras(scratch.path / "reference"));
  ASSERT_EQ(reference.loop.fit(reference.model, kEpochs), FitStatus::completed);
  const fs::path dir = scratch.path / "resumed";
  {
    auto callbacks = extras(dir);
    callbacks.push_back(stop_after(13));
    TrainingRun first(dir, 11, callbacks);
    EXPECT_EQ(first.loop.fit(first.model, kEpochs), FitStatus::cancelled);
  }
  TrainingRun second(dir, 99, extras(dir));
  testing::internal::CaptureStderr();
  ASSERT_EQ(second.loop.fit(second.model, kEpochs, torch::kCPU, (dir / "checkpoints").string()),
            FitStatus::completed);
  // Every callback with state found its own.
  EXPECT_THAT(testing::internal::GetCapturedStderr(), Not(HasSubstr("holds no state")));
  EXPECT_EQ(second.loop.state().resumed_from,
            (dir / "checkpoints" / "epoch0001-batch000005").string());
  expect_bitwise_equal(second.weights(), reference.weights());
  EXPECT_EQ(read_text(dir / "log.csv"), read_text(scratch.path / "reference" / "log.csv"));
  EXPECT_EQ(read_text(dir / "every3.csv"), read_text(scratch.path / "reference" / "every3.csv"));
  EXPECT_NE(read_text(dir / "every3.csv"), read_text(dir / "log.csv"));
  EXPECT_EQ(tensorboard_without_times(dir), tensorboard_without_times(scratch.path / "reference"));
}

// A callback of the test's with state, keyed by the name it is given.
struct Counter : Callback {
  explicit Counter(std::string key) : key(std::move(key)) {}
  std::string key;
  int64_t batches = 0;
  std::string state_key() const override { return key; }
  void on_event(Event event, TrainingLoop&) override { batches += event == Event::batch_end; }
  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("batches", torch::tensor(batches));
  }
};

// Without state, nothing needs a key of its own.
struct Quiet : Callback {
  std::string state_key() const override { return "quiet"; }
  void on_event(Event, TrainingLoop&) override {}
};

TEST_F(CheckpointTest, CallbacksWithStateSharingAKeyFailAtFitStart) {
  TrainingRun shared(scratch.path / "shared", 11,
                     {std::make_shared<Counter>("counter"), std::make_shared<Counter>("counter")});
  EXPECT_THAT([&] { shared.loop.fit(shared.model, 1); },
              ThrowsMessage<Error>(HasSubstr("two callbacks with state share the state key "
                                             "\"counter\"")));
  TrainingRun reduced(scratch.path / "reduced", 11,
                      {std::make_shared<Counter>("a-b"), std::make_shared<Counter>("a.b")});
  EXPECT_THAT([&] { reduced.loop.fit(reduced.model, 1); },
              ThrowsMessage<Error>(HasSubstr("the state keys \"a-b\" and \"a.b\" are the same")));
  TrainingRun quiet(scratch.path / "quiet", 11,
                    {std::make_shared<Quiet>(), std::make_shared<Quiet>(),
                     std::make_shared<Counter>("one"), std::make_shared<Counter>("two")});
  EXPECT_EQ(quiet.loop.fit(quiet.model, 1), FitStatus::completed);
}

// A metric without save/load cannot be checkpointed inside an epoch.
struct Opaque : Metric {
  std::string name() const override { return "opaque"; }
  void reset() override {}
  void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {}
  double compute() const override { return 0; }
  std::shared_ptr<Metric> clone() const override { return std::make_shared<Opaque>(); }
};

TEST_F(CheckpointTest, AMetricWithoutSaveFailsAtFitStartWhenCheckpointingInsideEpochs) {
  torch::manual_seed(1);
  Net model;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop(data::Epochs(make_dataset(16, 1), 8), nullptr, optimizer, losses::cross_entropy,
                    {std::make_shared<Opaque>()},
                    {callbacks::checkpoint((scratch.path / "c").string(),
                                           callbacks::CheckpointOptions().every_n_steps(10))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr("metric opaque: save() is not implemented")));
}

TEST_F(CheckpointTest, ASignalStopsAfterTheBatchWithACheckpoint) {
  TrainingRun reference(scratch.path / "reference", 11);
  reference.loop.fit(reference.model, kEpochs);
  const fs::path dir = scratch.path / "signalled";
  {
    auto raise_at_step_9 = callbacks::lambda(
        [](Event event, TrainingLoop& loop) {
          if (event == Event::update_start && loop.state().global_step == 8) std::raise(SIGTERM);
        },
        "raise");
    TrainingRun first(dir, 11, {raise_at_step_9}, 16, callbacks::CheckpointOptions().every_n_epochs(0));
    first.loop.handle_signals(true);
    EXPECT_EQ(first.loop.fit(first.model, kEpochs), FitStatus::interrupted);
    EXPECT_EQ(first.loop.state().interrupt_signal, SIGTERM);
    EXPECT_EQ(first.loop.state().global_step, 9);
    EXPECT_EQ(checkpoint_names((dir / "checkpoints").string()),
              std::vector<std::string>{"epoch0001-batch000001"});
  }
  TrainingRun second(dir, 99);
  second.loop.fit(second.model, kEpochs, torch::kCPU, (dir / "checkpoints").string());
  expect_bitwise_equal(second.weights(), reference.weights());
  EXPECT_EQ(read_text(dir / "log.csv"), read_text(scratch.path / "reference" / "log.csv"));
}

TEST_F(CheckpointTest, WeightsRoundTripAndMismatchesAreNamed) {
  torch::manual_seed(1);
  Net model;
  const std::string path = (scratch.path / "weights.pt").string();
  save_weights(model, path);
  torch::manual_seed(2);
  Net other;
  Model handle(other);
  load_weights(handle, path);
  EXPECT_TRUE(torch::equal(other->fc1->weight, model->fc1->weight));
  Net wider(17);
  Model wider_handle(wider);
  EXPECT_THAT([&] { load_weights(wider_handle, path); },
              ThrowsMessage<Error>(HasSubstr(path + ": \"fc1.weight\" has shape [16, 4]")));
  torch::nn::Linear linear(4, 16);
  Model linear_handle(linear);
  EXPECT_THAT([&] { load_weights(linear_handle, path); },
              ThrowsMessage<Error>(HasSubstr("holds no \"weight\", which the model has")));
  std::ofstream(scratch.path / "junk.pt") << "junk";
  EXPECT_THAT([&] { load_weights(handle, (scratch.path / "junk.pt").string()); },
              ThrowsMessage<Error>(HasSubstr("junk.pt: not a state dict that torch can read")));
}

TEST_F(CheckpointTest, TensorsRoundTripInOrderAndBadFilesAreNamed) {
  const std::string path = (scratch.path / "tensors.pt").string();
  const std::vector<std::pair<std::string, torch::Tensor>> tensors{
      {"z_inputs", torch::randn({5, 3}).t()},  // not contiguous
      {"a_labels", torch::arange(5)},
      {"mask", torch::tensor({true, false, true})}};
  save_tensors(tensors, path);
  const auto loaded = load_tensors(path);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(loaded[i].first, tensors[i].first);
    EXPECT_EQ(loaded[i].second.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_TRUE(torch::equal(loaded[i].second, tensors[i].second)) << tensors[i].first;
  }
  std::ofstream(scratch.path / "junk.pt") << "junk";
  EXPECT_THAT([&] { load_tensors((scratch.path / "junk.pt").string()); },
              ThrowsMessage<Error>(HasSubstr("junk.pt: not a dict of tensors that torch can read")));
  const std::string sparse_path = (scratch.path / "sparse.pt").string();
  EXPECT_THAT([&] { save_tensors({{"s", torch::eye(2).to_sparse()}}, sparse_path); },
              ThrowsMessage<Error>(HasSubstr(sparse_path + ": cannot write the tensors")));
  EXPECT_FALSE(fs::exists(sparse_path));
}

// A dict of the right names and shapes whose tensors cannot become the
// model's (fuzz/weights_fuzzer found the quantized one escaping as a
// c10::Error) is an Error, and the model keeps its weights.
TEST_F(CheckpointTest, WeightsThatAreNotDenseTensorsAreNamed) {
  torch::nn::Linear linear(4, 2);
  Model handle(linear);
  const torch::Tensor before = linear->weight.detach().clone();
  const torch::Tensor bias_before = linear->bias.detach().clone();
  const std::string path = (scratch.path / "odd.pt").string();
  const auto save = [&](const torch::Tensor& weight, const torch::Tensor& bias) {
    c10::Dict<std::string, torch::Tensor> dict;
    dict.insert("weight", weight);
    dict.insert("bias", bias);
    const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  };
  save(torch::quantize_per_tensor(torch::randn({2, 4}), 0.1, 0, torch::kQInt8), torch::zeros({2}));
  EXPECT_THAT([&] { load_weights(handle, path); },
              ThrowsMessage<Error>(HasSubstr("odd.pt: \"weight\" is a quantized QInt8 tensor, "
                                             "expected a dense one")));
  // The weight comes first and is fine; the bias fails: neither changes.
  save(torch::ones({2, 4}), torch::zeros({2}).to_sparse());
  EXPECT_THAT([&] { load_weights(handle, path); },
              ThrowsMessage<Error>(HasSubstr("\"bias\" is a sparse tensor, expected a dense one")));
  EXPECT_TRUE(torch::equal(linear->weight, before));
  EXPECT_TRUE(torch::equal(linear->bias, bias_before));
  save(torch::ones({2, 4}, torch::kFloat64), torch::zeros({2}));  // other dtypes convert, as copy_ does
  load_weights(handle, path);
  EXPECT_TRUE(torch::equal(linear->weight, torch::ones({2, 4})));
  // Nor are such tensors saved: torch.save has no storage to write them as.
  linear->register_buffer("scales", torch::quantize_per_tensor(torch::ones({2}), 0.1, 0, torch::kQInt8));
  EXPECT_THAT([&] { save_weights(handle, path); },
              ThrowsMessage<Error>(HasSubstr(path + ": cannot write the weights: \"scales\" is a "
                                                    "quantized tensor")));
}

// LibTorch rebuilds a tensor with the offset and strides its file names;
// these two files are fuzz/corpus/weights/python_state_dict.pt with the
// weight's offset (data.pkl byte 117), or its first stride (byte 126), set
// to 255 and the zip remade: loaded, they read memory outside the file.
TEST_F(CheckpointTest, WeightsThatReachOutsideTheirStorageAreRejected) {
  torch::nn::Linear linear(3, 2);
  Model handle(linear);
  const torch::Tensor before = linear->weight.detach().clone();
  const std::string data = TRAINLOOP_SOURCE_DIR "/tests/data/";
  EXPECT_THAT([&] { load_weights(handle, data + "weights_offset_past_storage.pt"); },
              ThrowsMessage<Error>(HasSubstr(
                  "weights_offset_past_storage.pt: \"weight\" starts outside its storage "
                  "(offset 255, shape [2, 3], strides [3, 1]; its storage holds 6 elements)")));
  EXPECT_THAT([&] { load_weights(handle, data + "weights_stride_past_storage.pt"); },
              ThrowsMessage<Error>(HasSubstr(
                  "\"weight\" reaches outside its storage (offset 0, shape [2, 3], strides "
                  "[255, 1]; its storage holds 6 elements)")));
  EXPECT_TRUE(torch::equal(linear->weight, before));
  // The file they were made from loads.
  load_weights(handle, TRAINLOOP_SOURCE_DIR "/fuzz/corpus/weights/python_state_dict.pt");
  EXPECT_TRUE(torch::equal(linear->weight, torch::zeros({2, 3})));
  EXPECT_TRUE(torch::equal(linear->bias, torch::ones({2})));
}

// What Python's torch.save(model.state_dict()) writes (an OrderedDict with
// _metadata, batch-norm buffers) loads into the same architecture in C++.
TEST_F(CheckpointTest, PythonsModuleStateDictLoads) {
  const auto written = testing_support::run_command(
      fmt::format("'{}' '{}/tests/python/write_state_dicts.py' '{}' 2>&1", TRAINLOOP_PYTHON,
                  TRAINLOOP_SOURCE_DIR, scratch.path.string()));
  ASSERT_EQ(written.status, 0) << written.output;
  torch::nn::Sequential net(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4),
                            torch::nn::ReLU(), torch::nn::Linear(4, 2));
  Model handle(net);
  load_weights(handle, (scratch.path / "module_state_dict.pt").string());
  const nlohmann::json expected =
      nlohmann::json::parse(read_text(scratch.path / "module_state_dict.json"));
  std::vector<std::pair<std::string, torch::Tensor>> state = handle.named_parameters();
  for (auto& buffer : handle.named_buffers()) state.push_back(buffer);
  ASSERT_EQ(state.size(), expected.size());
  for (const auto& [name, tensor] : state) {
    const auto values = expected.at(name).at("values").get<std::vector<double>>();
    EXPECT_TRUE(torch::equal(tensor.to(torch::kDouble).flatten(),
                             torch::tensor(values, torch::kDouble)))
        << name;
  }
}

// What save_weights writes is what torch.save(model.state_dict()) writes:
// Python's torch.load, with its defaults (weights_only=True from PyTorch
// 2.6), returns an OrderedDict that load_state_dict(strict=True) takes,
// batch norm's int64 num_batches_tracked included.
TEST_F(CheckpointTest, PythonTorchLoadsSavedWeightsWithItsDefaultsStrictly) {
  torch::manual_seed(11);
  torch::nn::Sequential net(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4),
                            torch::nn::ReLU(), torch::nn::Linear(4, 2));
  net->forward(torch::randn({8, 3}));  // moves the batch-norm statistics off their defaults
  Model handle(net);
  const std::string path = (scratch.path / "net.pt").string();
  save_weights(handle, path);
  nlohmann::json expected = {{"names", nlohmann::json::array()},
                             {"entries", nlohmann::json::object()}};
  std::vector<std::pair<std::string, torch::Tensor>> state = handle.named_parameters();
  for (auto& buffer : handle.named_buffers()) state.push_back(buffer);
  for (const auto& [name, tensor] : state) {
    const torch::Tensor values = tensor.detach().to(torch::kDouble).flatten().contiguous();
    expected["names"].push_back(name);
    expected["entries"][name] = {
        {"shape", tensor.sizes().vec()},
        {"dtype", tensor.scalar_type() == torch::kLong ? "int64" : "float32"},
        {"values", std::vector<double>(values.data_ptr<double>(),
                                       values.data_ptr<double>() + values.numel())}};
  }
  std::ofstream(scratch.path / "net.json") << expected.dump();
  const auto result = testing_support::run_command(fmt::format(
      "'{}' '{}/tests/python/check_saved_state_dict.py' '{}' '{}' sequential 2>&1",
      TRAINLOOP_PYTHON, TRAINLOOP_SOURCE_DIR, path, (scratch.path / "net.json").string()));
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("9 tensors loaded, 0 problems"));
}

// Python's torch loads the weights into the same architecture and gets the
// C++ outputs.
TEST_F(CheckpointTest, PythonTorchLoadsTheWeightsAndComputesTheSameOutputs) {
  torch::manual_seed(5);
  examples::LeNet model;
  model->eval();
  const torch::Tensor inputs = torch::rand({4, 1, 28, 28});
  const torch::Tensor outputs = model->forward(inputs);
  save_weights(model, (scratch.path / "lenet.pt").string());
  // As torch.save writes it, for torch.load's defaults (weights_only=True).
  const std::string bytes = io::state_dict_bytes({{"inputs", inputs}, {"outputs", outputs}});
  std::ofstream(scratch.path / "io.pt", std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  const auto result = testing_support::run_command(
      fmt::format("'{}' '{}/tests/python/load_lenet_weights.py' '{}' '{}' 2>&1", TRAINLOOP_PYTHON,
                  TRAINLOOP_SOURCE_DIR, (scratch.path / "lenet.pt").string(),
                  (scratch.path / "io.pt").string()));
  EXPECT_EQ(result.status, 0) << result.output;
  EXPECT_THAT(result.output, HasSubstr("max abs difference"));
}

}  // namespace
}  // namespace trainloop

namespace trainloop {
namespace {

// A rate a callback cut (as reduce_lr_on_plateau does) is the rate after a
// resume, though LibTorch 1.13's Optimizer::load restores no group
// options: the loop's checkpoint state keeps each group's rate.
TEST(CheckpointRatesTest, ARateACallbackSetSurvivesTheResume) {
  const TempDir scratch;
  const fs::path checkpoints = scratch.path / "checkpoints";
  auto run = [&](const std::string& resume, bool cut, std::vector<double>& rates_seen) {
    torch::manual_seed(4);
    Net model;
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
    TrainingLoop loop(data::Epochs(make_dataset(40, 1), 8).seed(5), nullptr, optimizer,
                      losses::cross_entropy, {},
                      {callbacks::checkpoint(checkpoints.string()),
                       callbacks::lambda([&rates_seen, cut](Event event, TrainingLoop& l) {
                         if (event == Event::epoch_start) rates_seen.push_back(l.state().learning_rate());
                         if (cut && event == Event::epoch_end && l.state().epoch == 0) {
                           l.state().set_learning_rate(0.01);
                         }
                       })});
    loop.handle_signals(false);
    return loop.fit(model, resume.empty() ? 1 : 2, torch::kCPU, resume);
  };
  std::vector<double> first;
  std::vector<double> resumed;
  ASSERT_EQ(run("", true, first), FitStatus::completed);
  ASSERT_EQ(run(checkpoints.string(), false, resumed), FitStatus::completed);
  EXPECT_EQ(first, std::vector<double>{0.1});
  EXPECT_EQ(resumed, std::vector<double>{0.01}) << "epoch 1 must train at the cut rate";
}

}  // namespace
}  // namespace trainloop
