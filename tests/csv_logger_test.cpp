#include "trainloop/callbacks/csv_logger.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::AllOf;
using testing::HasSubstr;
using testing_support::read_text;
using testing::ThrowsMessage;

data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return data::TensorDataset(torch::randn({size, 4}), torch::randint(0, 3, {size}));
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

// The log as Python's csv module reads it (tests/python/check_csv_log.py).
json read_log(const fs::path& path) {
  const std::string command =
      fmt::format("'{}' '{}/tests/python/check_csv_log.py' '{}' 2>&1", TRAINLOOP_PYTHON,
                  TRAINLOOP_SOURCE_DIR, path.string());
  const testing_support::CommandResult result = testing_support::run_command(command);
  if (result.status != 0) {
    throw std::runtime_error(fmt::format("{} failed: {}", command, result.output));
  }
  return json::parse(result.output);
}

// A number the script wrote as float.hex() (or nan/inf/-inf).
double from_hex(const json& value) { return std::strtod(value.get<std::string>().c_str(), nullptr); }

void expect_same_double(double expected, const json& written, const std::string& where) {
  const double value = from_hex(written);
  if (std::isnan(expected)) {
    EXPECT_TRUE(std::isnan(value)) << where << ": " << written;
  } else {
    EXPECT_EQ(value, expected) << where << ": " << written;
  }
}

// What the loop held when a row was due.
struct Row {
  int64_t epoch;  // 1-based
  int64_t batch;  // 1-based
  std::string phase;
  int64_t step;
  double lr;
  std::vector<double> metrics;
};

Row capture(const LoopState& state, int64_t batch) {
  Row row{state.epoch + 1, batch, state.phase == Phase::training ? "train" : "validation",
          state.global_step, state.learning_rate(), {}};
  for (const auto& metric : state.training_metrics) {
    row.metrics.push_back(state.metric(
        (state.phase == Phase::training ? "" : "val_") + metric->name()));
  }
  return row;
}

// Added after the logger: records the loop's values at every batch_end and
// phase end, and the events it saw.
struct Recorder {
  std::vector<Row> batches;
  std::vector<Row> phase_ends;
  std::vector<Event> events;

  std::shared_ptr<Callback> callback() {
    return callbacks::lambda([this](Event event, TrainingLoop& loop) {
      const LoopState& state = loop.state();
      events.push_back(event);
      const bool logged = state.phase == Phase::training || state.phase == Phase::validation;
      if (event == Event::batch_end && logged) batches.push_back(capture(state, state.batch + 1));
      if ((event == Event::training_end || event == Event::validation_end) && logged) {
        phase_ends.push_back(capture(state, state.batch));
      }
    }, "recorder");
  }
  bool saw(Event event) const {
    return std::find(events.begin(), events.end(), event) != events.end();
  }
};

// Throws `exception` at batch_end of training batch (epoch, batch), 0-based.
template <class Exception>
std::shared_ptr<Callback> throw_at(int64_t epoch, int64_t batch, Exception exception) {
  return callbacks::lambda([=](Event event, TrainingLoop& loop) {
    const LoopState& state = loop.state();
    if (event == Event::batch_end && state.phase == Phase::training && state.epoch == epoch &&
        state.batch == batch) {
      throw exception;
    }
  }, "thrower");
}

void expect_log(const fs::path& path, const std::vector<std::string>& metric_names,
                const std::vector<Row>& expected) {
  const json log = read_log(path);
  std::vector<std::string> header = {"epoch", "batch", "phase", "step", "lr"};
  header.insert(header.end(), metric_names.begin(), metric_names.end());
  EXPECT_EQ(log.at("header").get<std::vector<std::string>>(), header);
  const json& rows = log.at("rows");
  ASSERT_EQ(rows.size(), expected.size()) << log.dump();
  for (size_t i = 0; i < expected.size(); ++i) {
    const json& row = rows[i];
    const Row& want = expected[i];
    const std::string where = fmt::format("row {}: {}", i + 1, row.at("fields").dump());
    EXPECT_EQ(row.at("epoch").get<int64_t>(), want.epoch) << where;
    EXPECT_EQ(row.at("batch").get<int64_t>(), want.batch) << where;
    EXPECT_EQ(row.at("phase").get<std::string>(), want.phase) << where;
    EXPECT_EQ(row.at("step").get<int64_t>(), want.step) << where;
    ASSERT_FALSE(row.at("lr").is_null()) << where;
    expect_same_double(want.lr, row.at("lr"), where + " lr");
    ASSERT_EQ(row.at("metrics").size(), want.metrics.size()) << where;
    for (size_t m = 0; m < want.metrics.size(); ++m) {
      expect_same_double(want.metrics[m], row.at("metrics")[m], where + " " + metric_names[m]);
    }
  }
}

const std::vector<std::string> kMetricNames = {"loss", "accuracy", "top2_accuracy"};
const std::string kHeader = "epoch,batch,phase,step,lr,loss,accuracy,top2_accuracy\n";

struct CsvLoggerTest : testing::Test {
  torch::nn::Linear model{4, 3};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};
  // 3 training batches and 2 validation batches of 4.
  data::TensorDataset train = make_dataset(12, 1);
  data::TensorDataset valid = make_dataset(8, 2);
  testing_support::TempDir scratch;
  fs::path dir = scratch.path;
  fs::path log = dir / "log.csv";

  TrainingLoop make_loop(std::vector<std::shared_ptr<Callback>> callbacks) {
    return TrainingLoop(data::Epochs(train, 4).seed(3), data::Batches(valid, 4), optimizer,
                        losses::cross_entropy, {metrics::accuracy(), metrics::top_k_accuracy(2)},
                        std::move(callbacks));
  }
};

// Changes the learning rate every training batch, so each row has its own.
std::shared_ptr<Callback> decaying_rate() {
  return callbacks::lambda([](Event event, TrainingLoop& loop) {
    LoopState& state = loop.state();
    if (event == Event::batch_start && state.phase == Phase::training) {
      state.set_learning_rate(0.1 / static_cast<double>(state.global_step + 1));
    }
  });
}

TEST(CsvLoggerOptionsTest, RejectsBadOptions) {
  using callbacks::CsvLoggerOptions;
  EXPECT_THAT([] { callbacks::csv_logger(CsvLoggerOptions("a.csv").every_n_batches(0)); },
              ThrowsMessage<Error>(HasSubstr("every_n_batches is 0, expected >= 1")));
  EXPECT_THAT([] { callbacks::csv_logger(""); },
              ThrowsMessage<Error>(HasSubstr("path is empty")));
  EXPECT_THAT([] { callbacks::csv_logger(CsvLoggerOptions("a.csv").flush_seconds(-1)); },
              ThrowsMessage<Error>(HasSubstr("csv_logger: flush_seconds is -1, expected >= 0")));
}

TEST(CsvLoggerOptionsTest, DefaultsAndKey) {
  const callbacks::CsvLoggerOptions options(std::string("run/log.csv"));
  EXPECT_EQ(options.path(), "run/log.csv");
  EXPECT_FALSE(options.per_epoch());
  EXPECT_EQ(options.every_n_batches(), 1);
  EXPECT_TRUE(options.append());
  EXPECT_EQ(options.flush_seconds(), 1.0);
  EXPECT_EQ(callbacks::csv_logger("run/log.csv")->state_key(), "csv_logger:run/log.csv");
}

// The file's size on disk at each epoch end, seen by a callback after the logger.
struct SizesAtEpochEnds {
  explicit SizesAtEpochEnds(fs::path path)
      : callback(callbacks::lambda([this, path](Event event, TrainingLoop&) {
          if (event == Event::epoch_end) sizes.push_back(fs::file_size(path));
        })) {}
  std::vector<uintmax_t> sizes;
  std::shared_ptr<Callback> callback;
};

TEST_F(CsvLoggerTest, EpochEndsFlushAtMostOncePerFlushSeconds) {
  SizesAtEpochEnds seen(log);
  auto loop = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).flush_seconds(3600)),
       seen.callback});
  loop.fit(model, 3);
  ASSERT_EQ(seen.sizes.size(), 3u);
  EXPECT_GT(seen.sizes[0], kHeader.size());  // the first epoch end flushed its 5 rows
  EXPECT_EQ(seen.sizes[1], seen.sizes[0]);   // the next ones waited
  EXPECT_EQ(seen.sizes[2], seen.sizes[0]);
  EXPECT_EQ(read_log(log).at("rows").size(), 15u);  // the fit's end flushed the rest
}

TEST_F(CsvLoggerTest, ZeroFlushSecondsFlushesAtEveryEpochEnd) {
  SizesAtEpochEnds seen(log);
  auto loop = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).flush_seconds(0)),
       seen.callback});
  loop.fit(model, 3);
  ASSERT_EQ(seen.sizes.size(), 3u);
  EXPECT_GT(seen.sizes[0], kHeader.size());
  EXPECT_GT(seen.sizes[1], seen.sizes[0]);
  EXPECT_GT(seen.sizes[2], seen.sizes[1]);
  EXPECT_EQ(seen.sizes[2], fs::file_size(log));
}

TEST_F(CsvLoggerTest, PerBatchRowsHoldTheLoopsValues) {
  const fs::path nested = dir / "a" / "b" / "log.csv";  // parents are created
  Recorder recorder;
  auto loop = make_loop(
      {decaying_rate(), callbacks::csv_logger(nested.string()), recorder.callback()});
  ASSERT_EQ(loop.fit(model, 2), FitStatus::completed);

  ASSERT_EQ(recorder.batches.size(), 10u);
  const std::string text = read_text(nested);
  EXPECT_EQ(text.substr(0, kHeader.size()), kHeader);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  expect_log(nested, kMetricNames, recorder.batches);
  // The first row, spelled out: epoch 1, batch 1, one update at lr 0.1.
  const json first = read_log(nested).at("rows")[0].at("fields");
  EXPECT_EQ(first[0], "1");
  EXPECT_EQ(first[1], "1");
  EXPECT_EQ(first[2], "train");
  EXPECT_EQ(first[3], "1");
  EXPECT_EQ(first[4], "0.1");
  // Steps 2 and 3 ran at 0.1/2 and 0.1/3: the shortest round-trip forms.
  EXPECT_THAT(text, HasSubstr("\n1,3,train,3,0.03333333333333333,"));
  EXPECT_THAT(text, HasSubstr("\n1,2,validation,3,0.03333333333333333,"));
}

TEST_F(CsvLoggerTest, EveryNBatchesKeepsEveryNthAndTheLastBatch) {
  Recorder recorder;
  auto loop = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).every_n_batches(2)),
       recorder.callback()});
  loop.fit(model, 2);
  std::vector<Row> expected;
  for (const Row& row : recorder.batches) {
    const int64_t count = row.phase == "train" ? 3 : 2;
    if (row.batch % 2 == 0 || row.batch == count) expected.push_back(row);
  }
  ASSERT_EQ(expected.size(), 6u);  // per epoch: train 2 and 3, validation 2
  expect_log(log, kMetricNames, expected);
}

TEST_F(CsvLoggerTest, PerEpochModeWritesOneRowPerPhase) {
  Recorder recorder;
  auto loop = make_loop(
      {decaying_rate(),
       callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).per_epoch(true)),
       recorder.callback()});
  loop.fit(model, 2);
  ASSERT_EQ(recorder.phase_ends.size(), 4u);
  // Per phase: its batch count, and the values after its last batch.
  std::vector<Row> expected = recorder.phase_ends;
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(expected[i].batch, expected[i].phase == "train" ? 3 : 2);
    const Row& last_batch = recorder.batches[i % 2 == 0 ? i / 2 * 5 + 2 : i / 2 * 5 + 4];
    EXPECT_EQ(expected[i].metrics, last_batch.metrics);
    EXPECT_EQ(expected[i].batch, last_batch.batch);
  }
  expect_log(log, kMetricNames, expected);
  EXPECT_EQ(read_text(log).rfind(kHeader, 0), 0u);
}

TEST_F(CsvLoggerTest, ASecondFitAppendsWithoutASecondHeader) {
  Recorder recorder;
  // append(false) truncates at the first fit only; the same logger continues
  // its file in the next one.
  write_text(log, "old contents\n");
  auto loop = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).append(false)),
       recorder.callback()});
  loop.fit(model, 2);
  loop.fit(model, 1);
  ASSERT_EQ(recorder.batches.size(), 15u);
  expect_log(log, kMetricNames, recorder.batches);

  // A new logger on the same file appends by default.
  auto next = make_loop({callbacks::csv_logger(log.string()), recorder.callback()});
  next.fit(model, 1);
  ASSERT_EQ(recorder.batches.size(), 20u);
  expect_log(log, kMetricNames, recorder.batches);
  const std::string text = read_text(log);
  EXPECT_EQ(text.rfind(kHeader, 0), 0u);
  EXPECT_EQ(text.find(kHeader, 1), std::string::npos);

  // append(false) on a new logger starts over.
  Recorder fresh;
  auto truncating = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).append(false)),
       fresh.callback()});
  truncating.fit(model, 1);
  expect_log(log, kMetricNames, fresh.batches);
}

TEST_F(CsvLoggerTest, AppendingEndsAPartialLastLine) {
  write_text(log, kHeader + "1,1,train,1,0.1,1.5,0.5,0.75\n1,2,tr");
  Recorder recorder;
  auto loop = make_loop({callbacks::csv_logger(log.string()), recorder.callback()});
  loop.fit(model, 1);
  const std::string text = read_text(log);
  EXPECT_THAT(text, HasSubstr("\n1,2,tr\n1,1,train,1,"));
}

TEST_F(CsvLoggerTest, AppendingToAFileWithAnotherHeaderFails) {
  const std::string old = "epoch,batch,phase,step,lr,loss\n1,1,train,1,0.1,2.5\n";
  write_text(log, old);
  Recorder recorder;
  auto loop = make_loop({callbacks::csv_logger(log.string()), recorder.callback()});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(AllOf(
                  HasSubstr("at fit_start"), HasSubstr(log.string()),
                  HasSubstr("\"epoch,batch,phase,step,lr,loss\""),
                  HasSubstr("expected \"epoch,batch,phase,step,lr,loss,accuracy,top2_accuracy\""))));
  EXPECT_EQ(read_text(log), old);
  EXPECT_TRUE(recorder.saw(Event::fit_end));
}

// Returns `value` whatever it is given; named as the caller wants.
class ConstantMetric : public Metric {
 public:
  ConstantMetric(std::string name, double value) : name_(std::move(name)), value_(value) {}
  std::string name() const override { return name_; }
  void reset() override {}
  void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {}
  double compute() const override { return value_; }
  std::shared_ptr<Metric> clone() const override {
    return std::make_shared<ConstantMetric>(name_, value_);
  }

 private:
  std::string name_;
  double value_;
};

TEST_F(CsvLoggerTest, QuotesNamesAndSpellsNonFiniteValues) {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::string> names = {"loss",     "weird,\"name\"", "two\nlines",
                                          "nan",      "minus_nan",      "inf",
                                          "minus_inf", "tiny"};
  std::vector<std::shared_ptr<Metric>> metrics = {
      std::make_shared<ConstantMetric>(names[1], 0.25),
      std::make_shared<ConstantMetric>(names[2], 1.0 / 3.0),
      std::make_shared<ConstantMetric>(names[3], nan),
      std::make_shared<ConstantMetric>(names[4], -nan),
      std::make_shared<ConstantMetric>(names[5], inf),
      std::make_shared<ConstantMetric>(names[6], -inf),
      std::make_shared<ConstantMetric>(names[7], 5e-324)};
  Recorder recorder;
  TrainingLoop loop(data::Epochs(train, 4).seed(3), data::Batches(valid, 4), optimizer,
                    losses::cross_entropy, metrics,
                    {callbacks::csv_logger(log.string()), recorder.callback()});
  loop.fit(model, 1);
  const std::string text = read_text(log);
  EXPECT_EQ(text.rfind("epoch,batch,phase,step,lr,loss,\"weird,\"\"name\"\"\",\"two\nlines\","
                       "nan,minus_nan,inf,minus_inf,tiny\n",
                       0),
            0u)
      << text;
  EXPECT_THAT(text, HasSubstr(",0.25,0.3333333333333333,nan,nan,inf,-inf,5e-324\n"));
  expect_log(log, names, recorder.batches);

  // The header with a quoted newline is recognized when appending.
  TrainingLoop second(data::Epochs(train, 4).seed(3), data::Batches(valid, 4), optimizer,
                      losses::cross_entropy, metrics,
                      {callbacks::csv_logger(log.string()), recorder.callback()});
  second.fit(model, 1);
  expect_log(log, names, recorder.batches);
}

TEST_F(CsvLoggerTest, WithoutParameterGroupsTheRateIsEmpty) {
  torch::optim::SGD empty(std::vector<torch::optim::OptimizerParamGroup>{},
                          torch::optim::SGDOptions(0.1));
  TrainingLoop loop(data::Epochs(train, 4).seed(3), nullptr, empty, losses::cross_entropy, {},
                    {callbacks::csv_logger(log.string())});
  loop.fit(model, 1);
  const json rows = read_log(log).at("rows");
  ASSERT_EQ(rows.size(), 3u);
  for (const json& row : rows) {
    EXPECT_TRUE(row.at("lr").is_null()) << row.dump();
    EXPECT_EQ(row.at("step"), row.at("batch"));
  }
}

TEST_F(CsvLoggerTest, AnUncreatableDirectoryFailsBeforeFitStart) {
  write_text(dir / "file", "not a directory\n");
  const fs::path path = dir / "file" / "run" / "log.csv";
  Recorder recorder;
  auto loop = make_loop({callbacks::csv_logger(path.string()), recorder.callback()});
  // When fit locks the log (see Callback::outputs).
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(AllOf(HasSubstr(path.string() + ": cannot create the directory"),
                                         HasSubstr("Not a directory"))));
  EXPECT_TRUE(recorder.batches.empty());
}

TEST_F(CsvLoggerTest, ADirectoryAsPathFails) {
  for (const bool append : {true, false}) {
    auto loop = make_loop(
        {callbacks::csv_logger(callbacks::CsvLoggerOptions(dir.string()).append(append))});
    EXPECT_THAT([&] { loop.fit(model, 1); },
                ThrowsMessage<Error>(AllOf(HasSubstr(dir.string() + ": cannot open for writing"),
                                           HasSubstr("Is a directory"))))
        << "append " << append;
  }
}

TEST_F(CsvLoggerTest, AFullDiskFailsAtTheFlushNamingTheFile) {
  ASSERT_TRUE(fs::exists("/dev/full")) << "/dev/full is missing: the test needs Linux's full device";
  Recorder recorder;
  auto loop = make_loop({callbacks::csv_logger("/dev/full"), recorder.callback()});
  EXPECT_THAT([&] { loop.fit(model, 2); },
              ThrowsMessage<Error>(AllOf(HasSubstr("at epoch_end"),
                                         HasSubstr("/dev/full: cannot write"),
                                         HasSubstr("No space left on device"))));
  EXPECT_TRUE(recorder.saw(Event::fit_end));
  EXPECT_EQ(recorder.batches.size(), 5u);  // the first epoch, up to its flush
}

TEST_F(CsvLoggerTest, TheLogIsCompleteAfterACancelledFit) {
  Recorder recorder;
  auto loop = make_loop({callbacks::csv_logger(log.string()), recorder.callback(),
                         throw_at(1, 1, CancelFit())});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::cancelled);
  ASSERT_EQ(recorder.batches.size(), 7u);  // epoch 1, then 2 batches of epoch 2
  expect_log(log, kMetricNames, recorder.batches);
}

TEST_F(CsvLoggerTest, ACancelledPhaseStillGetsItsLastRow) {
  Recorder recorder;
  auto loop = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).every_n_batches(2)),
       recorder.callback(), throw_at(1, 0, CancelFit())});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::cancelled);
  ASSERT_EQ(recorder.batches.size(), 6u);
  // Epoch 1: train 2 and 3, validation 2; epoch 2: train 1, where it stopped.
  expect_log(log, kMetricNames,
             {recorder.batches[1], recorder.batches[2], recorder.batches[4], recorder.batches[5]});
}

TEST_F(CsvLoggerTest, PerEpochModeLogsACancelledPhase) {
  Recorder recorder;
  auto loop = make_loop(
      {callbacks::csv_logger(callbacks::CsvLoggerOptions(log.string()).per_epoch(true)),
       recorder.callback(), throw_at(1, 1, CancelFit())});
  loop.fit(model, 2);
  ASSERT_EQ(recorder.phase_ends.size(), 3u);
  std::vector<Row> expected = recorder.phase_ends;
  expected[2].batch = 2;  // the batches that ran
  expect_log(log, kMetricNames, expected);
}

TEST_F(CsvLoggerTest, TheLogIsCompleteAfterAnotherCallbackFails) {
  Recorder recorder;
  auto loop = make_loop({callbacks::csv_logger(log.string()), recorder.callback(),
                         throw_at(1, 1, std::runtime_error("boom"))});
  EXPECT_THAT([&] { loop.fit(model, 2); },
              ThrowsMessage<Error>(HasSubstr("callback thrower failed at batch_end: boom")));
  ASSERT_EQ(recorder.batches.size(), 7u);
  expect_log(log, kMetricNames, recorder.batches);
}

TEST_F(CsvLoggerTest, EvaluateAndPredictWriteNothing) {
  auto logger = callbacks::csv_logger(log.string());
  auto loop = make_loop({logger});
  loop.evaluate(model, data::Batches(valid, 4));
  loop.predict(model, data::Batches(valid, 4));
  EXPECT_FALSE(fs::exists(log));
  loop.fit(model, 1);
  const std::string after_fit = read_text(log);
  loop.evaluate(model, data::Batches(valid, 4));
  loop.predict(model, data::Batches(valid, 4));
  EXPECT_EQ(read_text(log), after_fit);
  EXPECT_EQ(read_log(log).at("rows").size(), 5u);
}

}  // namespace
}  // namespace trainloop
