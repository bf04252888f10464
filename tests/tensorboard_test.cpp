#include "trainloop/callbacks/tensorboard.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;

struct TempDir {
  fs::path path;
  TempDir() {
    std::string name = (fs::temp_directory_path() / "trainloop-tensorboard-XXXXXX").string();
    if (mkdtemp(name.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = name;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

const std::string kTool = TRAINLOOP_SOURCE_DIR "/tests/python/tfevents.py";

// (run, tag, step) -> value; histograms and text have no value (nullopt).
using Key = std::tuple<std::string, std::string, int64_t>;
using Values = std::map<Key, std::optional<double>>;

struct Decoded {
  int status = -1;
  std::string errors;
  Values values;
  size_t rows = 0;
};

// Runs the independent reader, `tfevents.py --strict --tsv`, on `directory`.
Decoded decode(const fs::path& directory) {
  TempDir scratch;
  const fs::path errors = scratch.path / "stderr";
  const std::string command = fmt::format("'{}' '{}' --strict --tsv '{}' 2>'{}'", TRAINLOOP_PYTHON,
                                          kTool, directory.string(), errors.string());
  Decoded decoded;
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return decoded;
  std::string output;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
  const int status = pclose(pipe);
  decoded.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream error_file(errors);
  decoded.errors.assign(std::istreambuf_iterator<char>(error_file), {});
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> cells;
    std::istringstream fields(line);
    for (std::string cell; std::getline(fields, cell, '\t');) cells.push_back(cell);
    if (cells.size() != 5) throw std::runtime_error("bad tsv line: " + line);
    std::optional<double> value;
    if (cells[4] != "None") value = std::stod(cells[4]);
    decoded.values[{cells[0], cells[1], std::stoll(cells[2])}] = value;
    ++decoded.rows;
  }
  return decoded;
}

std::vector<std::string> subdirectories(const fs::path& directory) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.is_directory()) names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return data::TensorDataset(torch::randn({size, 4}), torch::randint(0, 3, {size}));
}

struct TensorBoardTest : testing::Test {
  torch::nn::Linear model{4, 3};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};
  // 3 training batches and 2 validation batches of 4.
  data::TensorDataset train = make_dataset(12, 1);
  data::TensorDataset valid = make_dataset(8, 2);
  TempDir dir;
  fs::path log_dir = dir.path / "logs";

  void SetUp() override {
    // A reader that cannot run fails each test (SetUp's failure skips the body).
    ASSERT_TRUE(fs::exists(kTool)) << kTool << " is missing from the source tree";
    ASSERT_TRUE(fs::exists(TRAINLOOP_PYTHON))
        << "no Python to run " << kTool << " with (" << TRAINLOOP_PYTHON << "): install python3";
  }

  TrainingLoop make_loop(std::vector<std::shared_ptr<Callback>> callbacks, bool validation = true) {
    return TrainingLoop(data::Epochs(train, 4).seed(3),
                        validation ? data::DataSource(data::Batches(valid, 4)) : nullptr, optimizer,
                        losses::cross_entropy, {metrics::accuracy()}, std::move(callbacks));
  }

  callbacks::TensorBoardOptions options() const {
    return callbacks::TensorBoardOptions().log_dir(log_dir.string());
  }
};

// The loop's own values, read where the logger reads them. The learning
// rate changes every step, so a wrong step or a stale value shows.
struct Recorder {
  Values values;
  std::shared_ptr<Callback> callback() {
    return callbacks::lambda([this](Event event, TrainingLoop& loop) {
      LoopState& state = loop.state();
      if (event == Event::batch_start && state.phase == Phase::training) {
        state.set_learning_rate(0.1 / static_cast<double>(state.global_step + 1));
      }
      if (event == Event::batch_end && state.phase == Phase::training) {
        for (const char* name : {"loss", "accuracy"}) {
          values[{"train", name, state.global_step}] = state.metric(name);
        }
        values[{"train", "learning_rate", state.global_step}] = state.learning_rate();
      }
      if (event == Event::validation_end && state.phase == Phase::validation) {
        for (const char* name : {"loss", "accuracy"}) {
          values[{"validation", name, state.global_step}] =
              state.metric(std::string("val_") + name);
        }
      }
    });
  }
};

void expect_same_values(const Values& decoded, const Values& recorded) {
  std::vector<Key> decoded_keys;
  std::vector<Key> recorded_keys;
  for (const auto& [key, value] : decoded) decoded_keys.push_back(key);
  for (const auto& [key, value] : recorded) recorded_keys.push_back(key);
  ASSERT_EQ(decoded_keys, recorded_keys);
  for (const auto& [key, value] : recorded) {
    const auto& [run, tag, step] = key;
    ASSERT_TRUE(decoded.at(key).has_value()) << run << " " << tag << " " << step;
    // simple_value is a 32-bit float: the file holds the float nearest the value.
    EXPECT_EQ(*decoded.at(key), static_cast<double>(static_cast<float>(*value)))
        << run << " " << tag << " " << step;
  }
}

TEST(TensorBoardOptionsTest, RejectsBadOptions) {
  using callbacks::TensorBoardOptions;
  EXPECT_THAT([] { callbacks::tensorboard(TensorBoardOptions().log_every_n_steps(0)); },
              ThrowsMessage<Error>(HasSubstr("log_every_n_steps is 0, expected >= 1")));
  EXPECT_THAT([] { callbacks::tensorboard(TensorBoardOptions().log_dir("")); },
              ThrowsMessage<Error>(HasSubstr("log_dir is empty")));
  EXPECT_EQ(callbacks::tensorboard()->state_key(), "tensorboard:run/tensorboard/stats");
  EXPECT_EQ(callbacks::tensorboard(callbacks::TensorBoardOptions().log_dir("runs").run_name("a"))
                ->state_key(),
            "tensorboard:runs/a");
}

// The training event file's size on disk at each epoch end: the first epoch
// end flushes, the next ones wait within flush_seconds, the fit's end writes
// the rest; with 0 every epoch end flushes.
TEST_F(TensorBoardTest, EpochEndsFlushAtMostOncePerFlushSeconds) {
  for (const double seconds : {3600.0, 0.0}) {
    const std::string run = seconds > 0 ? "throttled" : "every";
    const fs::path train_dir = log_dir / run / "train";
    std::vector<uintmax_t> sizes;
    auto loop = make_loop(
        {callbacks::tensorboard(options().run_name(run).log_every_n_steps(1).flush_seconds(seconds)),
         callbacks::lambda([&](Event event, TrainingLoop&) {
           if (event != Event::epoch_end) return;
           for (const auto& entry : fs::directory_iterator(train_dir)) sizes.push_back(entry.file_size());
         })},
        /*validation=*/false);
    loop.fit(model, 3);
    ASSERT_EQ(sizes.size(), 3u) << run;
    uintmax_t final_size = 0;
    for (const auto& entry : fs::directory_iterator(train_dir)) final_size = entry.file_size();
    if (seconds > 0) {
      EXPECT_EQ(sizes[1], sizes[0]);
      EXPECT_EQ(sizes[2], sizes[0]);
      EXPECT_GT(final_size, sizes[0]);
    } else {
      EXPECT_GT(sizes[1], sizes[0]);
      EXPECT_GT(sizes[2], sizes[1]);
      EXPECT_EQ(final_size, sizes[2]);
    }
  }
  EXPECT_THAT([] { callbacks::tensorboard(callbacks::TensorBoardOptions().flush_seconds(-1)); },
              ThrowsMessage<Error>(HasSubstr("tensorboard: flush_seconds is -1, expected >= 0")));
}

TEST_F(TensorBoardTest, LogsEveryValueTheLoopHad) {
  Recorder recorder;
  auto loop =
      make_loop({callbacks::tensorboard(options().log_every_n_steps(1)), recorder.callback()});
  ASSERT_EQ(loop.fit(model, 2), FitStatus::completed);

  const std::vector<std::string> runs = subdirectories(log_dir);
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_TRUE(std::regex_match(runs[0], std::regex(R"(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d)")))
      << runs[0];
  EXPECT_EQ(subdirectories(log_dir / runs[0]), (std::vector<std::string>{"train", "validation"}));

  const Decoded decoded = decode(log_dir / runs[0]);
  ASSERT_EQ(decoded.status, 0) << decoded.errors;
  EXPECT_EQ(decoded.rows, decoded.values.size());  // no (run, tag, step) twice
  // 6 steps x (loss, accuracy, learning_rate), 2 epochs x (loss, accuracy).
  ASSERT_EQ(recorder.values.size(), 22u);
  expect_same_values(decoded.values, recorder.values);
}

TEST_F(TensorBoardTest, LogsEveryNStepsAndEachEpochsLastStep) {
  Recorder recorder;
  auto loop = make_loop({callbacks::tensorboard(options().run_name("every2").log_every_n_steps(2)),
                         recorder.callback()});
  loop.fit(model, 2);
  const Decoded decoded = decode(log_dir / "every2");
  ASSERT_EQ(decoded.status, 0) << decoded.errors;
  std::set<int64_t> train_steps;
  for (const auto& [key, value] : decoded.values) {
    if (std::get<0>(key) == "train") train_steps.insert(std::get<2>(key));
  }
  // Steps 2, 4, 6 by the interval; 3 ends the first epoch (6 ends the second).
  EXPECT_EQ(train_steps, (std::set<int64_t>{2, 3, 4, 6}));
  Values expected;
  for (const auto& [key, value] : recorder.values) {
    if (std::get<0>(key) == "validation" || train_steps.count(std::get<2>(key)) > 0) {
      expected[key] = value;
    }
  }
  expect_same_values(decoded.values, expected);
}

TEST_F(TensorBoardTest, EveryFitIsANewRun) {
  auto loop = make_loop({callbacks::tensorboard(options().log_every_n_steps(1))});
  loop.fit(model, 1);
  loop.fit(model, 1);
  const std::vector<std::string> runs = subdirectories(log_dir);
  ASSERT_EQ(runs.size(), 2u);
  for (const std::string& run : runs) {
    const Decoded decoded = decode(log_dir / run);
    ASSERT_EQ(decoded.status, 0) << decoded.errors;
    // Each run has its own steps 1..3 and one validation at step 3.
    EXPECT_EQ(decoded.values.size(), 3u * 3u + 2u) << run;
    EXPECT_EQ(decoded.values.count({"train", "loss", 1}), 1u);
    EXPECT_EQ(decoded.values.count({"validation", "loss", 3}), 1u);
  }
}

TEST_F(TensorBoardTest, WritesHistogramsAndConfigText) {
  auto loop = make_loop({callbacks::tensorboard(
      options().run_name("histograms").histograms(true).config_text("lr: 0.1, batch: 4"))});
  loop.fit(model, 2);
  const Decoded decoded = decode(log_dir / "histograms");
  ASSERT_EQ(decoded.status, 0) << decoded.errors;
  EXPECT_EQ(decoded.values.count({"train", "config", 0}), 1u);
  for (const int64_t step : {3, 6}) {
    for (const char* tag :
         {"parameters/weight", "parameters/bias", "gradients/weight", "gradients/bias"}) {
      EXPECT_EQ(decoded.values.count({"train", tag, step}), 1u) << tag << " " << step;
    }
  }
  // Default interval 10: only each epoch's last step has training scalars.
  EXPECT_EQ(decoded.values.count({"train", "loss", 3}), 1u);
  EXPECT_EQ(decoded.values.count({"train", "loss", 1}), 0u);
}

TEST_F(TensorBoardTest, WithoutValidationDataThereIsNoValidationRun) {
  auto loop = make_loop({callbacks::tensorboard(options().run_name("solo"))},
                        /*validation=*/false);
  loop.fit(model, 1);
  EXPECT_EQ(subdirectories(log_dir / "solo"), std::vector<std::string>{"train"});
}

TEST_F(TensorBoardTest, ACancelledFitKeepsWhatWasLogged) {
  Recorder recorder;
  auto stop = callbacks::lambda([](Event event, TrainingLoop& loop) {
    if (event == Event::batch_end && loop.state().phase == Phase::training &&
        loop.state().epoch == 1 && loop.state().batch == 1) {
      throw CancelFit();
    }
  });
  auto loop = make_loop({callbacks::tensorboard(options().run_name("cancel").log_every_n_steps(1)),
                         recorder.callback(), stop});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::cancelled);
  const Decoded decoded = decode(log_dir / "cancel");
  ASSERT_EQ(decoded.status, 0) << decoded.errors;
  EXPECT_EQ(decoded.values.count({"train", "loss", 5}), 1u);
  expect_same_values(decoded.values, recorder.values);
}

TEST_F(TensorBoardTest, AFailedFitKeepsWhatWasLogged) {
  auto boom = callbacks::lambda([](Event event, TrainingLoop& loop) {
    if (event == Event::batch_end && loop.state().epoch == 1 && loop.state().batch == 0) {
      throw std::runtime_error("boom");
    }
  });
  auto loop =
      make_loop({callbacks::tensorboard(options().run_name("failed").log_every_n_steps(1)), boom});
  EXPECT_THROW(loop.fit(model, 2), Error);
  const Decoded decoded = decode(log_dir / "failed");
  ASSERT_EQ(decoded.status, 0) << decoded.errors;
  EXPECT_EQ(decoded.values.count({"train", "loss", 4}), 1u);
  EXPECT_EQ(decoded.values.count({"validation", "loss", 3}), 1u);
}

// A checkpoint taken before the first validation knows no validation file:
// one written after it (by a process then killed) holds records the resumed
// fit writes again, so restoring that checkpoint removes it.
TEST_F(TensorBoardTest, RestoringACheckpointFromBeforeTheFirstValidationRemovesItsFile) {
  auto tensorboard = callbacks::tensorboard(options().run_name("resumed").log_every_n_steps(1));
  std::string saved;
  auto checkpoint_then_stop = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    const LoopState& state = loop.state();
    if (event != Event::batch_end || state.phase != Phase::training) return;
    if (state.epoch == 0 && state.batch == 1) {
      torch::serialize::OutputArchive archive;
      tensorboard->save(archive);
      std::ostringstream out;
      archive.save_to(out);
      saved = out.str();
    }
    if (state.epoch == 1 && state.batch == 0) throw CancelFit();  // after epoch 0's validation
  });
  auto loop = make_loop({tensorboard, checkpoint_then_stop});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::cancelled);
  ASSERT_FALSE(saved.empty());
  const fs::path validation = log_dir / "resumed" / "validation";
  ASSERT_EQ(std::distance(fs::directory_iterator(validation), fs::directory_iterator()), 1);

  auto restored = callbacks::tensorboard(options().run_name("resumed").log_every_n_steps(1));
  torch::serialize::InputArchive archive;
  std::istringstream in(saved);
  archive.load_from(in);
  restored->load(archive);
  EXPECT_EQ(std::distance(fs::directory_iterator(validation), fs::directory_iterator()), 0);
  EXPECT_EQ(std::distance(fs::directory_iterator(log_dir / "resumed" / "train"), fs::directory_iterator()), 1);
}

TEST_F(TensorBoardTest, ReportsALogDirThatCannotBeMade) {
  std::ofstream(dir.path / "plain_file") << "x";
  auto loop = make_loop({callbacks::tensorboard(
      callbacks::TensorBoardOptions().log_dir((dir.path / "plain_file").string()).run_name("r"))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr((dir.path / "plain_file" / "r").string() +
                                             ": cannot create the directory")));
}

}  // namespace
}  // namespace trainloop
