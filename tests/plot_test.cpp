#include "trainloop/callbacks/plot.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;

// Parses the SVG with Python's XML parser (a malformed file fails) and lists
// each panel's title and the number of points of each line.
constexpr const char* kSummarize = R"PY(
import json, re, sys
import xml.etree.ElementTree as ET
ns = '{http://www.w3.org/2000/svg}'
panels = []
for p in ET.parse(sys.argv[1]).getroot().iter(ns + 'g'):
    if p.get('class') != 'panel':
        continue
    series = {}
    for s in p.iter(ns + 'g'):
        if s.get('class') == 'series':
            d = ' '.join(path.get('d') for path in s.iter(ns + 'path'))
            series[s.get('data-name')] = len(re.findall('[ML]', d))
    panels.append({'title': p.get('data-title'), 'series': series})
print(json.dumps(panels))
)PY";

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Runs `command`; returns its exit status and sets `output` to its stdout
// and stderr.
int run(const std::string& command, std::string& output) {
  std::FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  output.clear();
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return data::TensorDataset(torch::randn({size, 4}), torch::randint(0, 3, {size}));
}

struct PlotTest : testing::Test {
  fs::path directory;
  torch::nn::Linear model{4, 3};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};
  data::TensorDataset train = make_dataset(12, 1);
  data::TensorDataset valid = make_dataset(8, 2);

  void SetUp() override {
    directory = fs::temp_directory_path() /
                ("plot_test_" + std::to_string(::getpid()) + "_" +
                 testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(directory);
    fs::create_directories(directory);
  }
  void TearDown() override { fs::remove_all(directory); }

  TrainingLoop make_loop(std::vector<std::shared_ptr<Callback>> callbacks) {
    return TrainingLoop(data::Epochs(train, 4).seed(3), data::Batches(valid, 4), optimizer,
                        losses::cross_entropy, {metrics::accuracy()}, std::move(callbacks));
  }

  nlohmann::json summarize(const fs::path& svg) {
    const fs::path script = directory / "summarize.py";
    std::ofstream(script) << kSummarize;
    std::string output;
    EXPECT_EQ(run(std::string(TRAINLOOP_PYTHON) + " " + script.string() + " " + svg.string(),
                  output),
              0)
        << output;
    return nlohmann::json::parse(output);
  }

  fs::path write(const std::string& name, const std::string& text) {
    const fs::path path = directory / name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
};

TEST_F(PlotTest, FitDrawsAPanelPerMetricWithAPointPerEpoch) {
  const fs::path svg = directory / "curves.svg";
  // The loop's values at each epoch_end, to draw the same picture from a log.
  std::string log = "epoch,batch,phase,step,lr,loss,accuracy\n";
  auto capture = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event != Event::epoch_end) return;
    const LoopState& s = loop.state();
    log += fmt::format("{},3,train,{},0.1,{},{}\n", s.epoch + 1, s.global_step, s.metric("loss"),
                       s.metric("accuracy"));
    log += fmt::format("{},2,validation,{},0.1,{},{}\n", s.epoch + 1, s.global_step,
                       s.metric("val_loss"), s.metric("val_accuracy"));
  });
  TrainingLoop loop = make_loop({plot(PlotOptions(svg.string())), capture});
  loop.fit(model, 3);

  const nlohmann::json panels = summarize(svg);
  EXPECT_EQ(panels, nlohmann::json::parse(R"([
    {"title": "loss", "series": {"training": 3, "validation": 3}},
    {"title": "accuracy", "series": {"training": 3, "validation": 3}}])"));

  // The CSV path draws the identical picture from the same numbers
  // (shortest round-trip formatting keeps every bit).
  const fs::path from_log = directory / "from_log.svg";
  plot_csv_log(write("log.csv", log).string(), PlotOptions(from_log.string()));
  EXPECT_EQ(read(from_log), read(svg));
}

TEST_F(PlotTest, WritesEmptyPanelsAtFitStart) {
  const fs::path svg = directory / "curves.svg";
  std::string at_fit_start;
  auto peek = callbacks::lambda([&](Event event, TrainingLoop&) {
    if (event == Event::fit_start) {
      at_fit_start = read(svg);
      throw CancelFit();
    }
  });
  TrainingLoop loop = make_loop({plot(PlotOptions(svg.string())), peek});
  loop.fit(model, 3);
  EXPECT_THAT(at_fit_start, HasSubstr("no data yet"));
  EXPECT_THAT(at_fit_start, HasSubstr("data-title=\"accuracy\""));
}

TEST_F(PlotTest, WithoutValidationOnlyTrainingLines) {
  const fs::path svg = directory / "curves.svg";
  TrainingLoop loop(data::Epochs(train, 4), nullptr, optimizer, losses::cross_entropy, {},
                    {plot(svg.string())});
  loop.fit(model, 2);
  EXPECT_EQ(summarize(svg), nlohmann::json::parse(R"([{"title": "loss", "series": {"training": 2}}])"));
}

TEST_F(PlotTest, UnwritableDirectoryFailsAtFitStartNamingThePath) {
  std::ofstream(directory / "file") << "not a directory";
  const std::string path = (directory / "file" / "curves.svg").string();
  int batches = 0;
  auto count = callbacks::lambda([&](Event event, TrainingLoop&) { batches += event == Event::batch_end; });
  TrainingLoop loop = make_loop({plot(PlotOptions(path)), count});
  EXPECT_THAT([&] { loop.fit(model, 1); }, ThrowsMessage<Error>(HasSubstr(path)));
  EXPECT_EQ(batches, 0);
}

TEST_F(PlotTest, StateKey) { EXPECT_EQ(plot(PlotOptions("x.svg"))->state_key(), "plot"); }

TEST_F(PlotTest, CsvLogTakesTheLastRowOfEachEpochAndPhase) {
  // Quoted header cells, CRLF line ends, a NaN and a per-batch log: the
  // last row of each (epoch, phase) counts.
  const fs::path per_batch = write(
      "per_batch.csv",
      "epoch,batch,phase,step,lr,\"loss\",\"acc, top\"\r\n"
      "1,1,train,1,0.1,2.0,0.1\r\n"
      "1,2,train,2,0.1,1.5,0.2\r\n"
      "1,1,validation,2,0.1,1.6,0.3\r\n"
      "2,1,train,3,0.1,1.2,0.4\r\n"
      "2,2,train,4,0.1,1.0,0.5\r\n"
      "2,1,validation,4,0.1,nan,0.6\r\n"
      "3,1,train,5,0.1,0.8,inf\r\n"
      "3,2,train,6,0.1,0.7,0.7\r\n"
      "3,1,validation,6,0.1,0.9,0.65\r\n");
  const fs::path per_epoch = write(
      "per_epoch.csv",
      "epoch,batch,phase,step,lr,loss,\"acc, top\"\n"
      "1,2,train,2,0.1,1.5,0.2\n"
      "1,1,validation,2,0.1,1.6,0.3\n"
      "2,2,train,4,0.1,1,0.5\n"
      "2,1,validation,4,0.1,NaN,0.6\n"
      "3,2,train,6,0.1,0.7,0.7\n"
      "3,1,validation,6,0.1,0.9,0.65\n");
  const fs::path a = directory / "a.svg";
  const fs::path b = directory / "b.svg";
  plot_csv_log(per_batch.string(), a.string());
  plot_csv_log(per_epoch.string(), b.string());
  EXPECT_EQ(read(a), read(b));
  EXPECT_EQ(summarize(a), nlohmann::json::parse(R"([
    {"title": "loss", "series": {"training": 3, "validation": 2}},
    {"title": "acc, top", "series": {"training": 3, "validation": 3}}])"));
}

TEST_F(PlotTest, CsvLogWithValPrefixedColumns) {
  const fs::path log = write("log.csv",
                             "epoch,batch,phase,step,lr,loss,val_loss\n"
                             "1,3,train,3,0.1,1.5,\n"
                             "1,2,validation,3,0.1,,1.6\n"
                             "2,3,train,6,0.1,1.2,\n"
                             "2,2,validation,6,0.1,,1.3\n");
  const fs::path svg = directory / "curves.svg";
  plot_csv_log(log.string(), svg.string());
  EXPECT_EQ(summarize(svg), nlohmann::json::parse(
                                R"([{"title": "loss", "series": {"training": 2, "validation": 2}}])"));
}

TEST_F(PlotTest, CsvLogErrorsNameFileLineAndColumn) {
  const std::string svg = (directory / "x.svg").string();
  auto expect_error = [&](const std::string& text, const std::string& message) {
    const std::string path = write("bad.csv", text).string();
    EXPECT_THAT([&] { plot_csv_log(path, svg); }, ThrowsMessage<Error>(HasSubstr(path + message)))
        << text;
  };
  expect_error("", ": empty file");
  expect_error("epoch,batch,step,lr,loss\n1,1,1,0.1,2\n", ":1: no column \"phase\"");
  expect_error("epoch,batch,phase,step,lr,loss\n1,1,train,1,0.1,2\n1,2,train,2,0.1,abc\n",
               ":3:6: \"abc\" in column \"loss\" is not a number");
  expect_error("epoch,batch,phase,step,lr,loss\n1,1,train,1,0.1\n",
               ":2: 5 cells, expected 6 as in the header");
  expect_error("epoch,batch,phase,step,lr,loss\n0,1,train,1,0.1,2\n",
               ":2:1: epoch \"0\", expected a whole number >= 1");
  expect_error("epoch,batch,phase,step,lr,loss\n1,1,test,1,0.1,2\n",
               ":2:3: phase \"test\", expected train or validation");
  expect_error("epoch,batch,phase,step,lr,loss\n1,1,train,1,0.1,\"2\n",
               ":2:6: the quote that opens this cell is never closed");
  expect_error("epoch,batch,phase,step,lr,loss\n1,1,train,1,0.1,2\"\n",
               ":2:6: quote inside an unquoted cell");
  // A quoted cell spanning lines moves the line count along.
  expect_error("epoch,batch,phase,step,lr,\"a\nb\"\n1,1,train,1,0.1,x\n",
               ":3:6: \"x\" in column \"a\nb\" is not a number");
  const std::string missing = (directory / "missing.csv").string();
  EXPECT_THAT([&] { plot_csv_log(missing, svg); },
              ThrowsMessage<Error>(HasSubstr(missing + ": cannot open")));
  EXPECT_FALSE(fs::exists(svg));
}

// A 16 MB file of one line: refused at the record limit having held about
// that much, not the file and millions of cells (a 100 MB line took 3 GB).
TEST_F(PlotTest, CsvLogWithAHugeLineStopsAtTheLimitWithLittleMemory) {
  const std::string svg = (directory / "x.svg").string();
  std::string line(size_t{16} << 20, ',');
  line.replace(0, 6, "epoch,");
  const std::string path = write("wide.csv", line).string();
  line = std::string();
  std::string message;
  const int64_t growth = testing_support::peak_memory_growth([&] {
    try {
      plot_csv_log(path, svg);
    } catch (const Error& e) {
      message = e.what();
    }
  });
  EXPECT_EQ(message, path + ":1: more than 10000 cells, expected at most that (a CSV log)");
  ASSERT_GE(growth, 0) << "/proc/self/status or /proc/self/clear_refs is not available";
  EXPECT_LT(growth, int64_t{16} << 20) << "peak memory grew by " << growth << " bytes";
  const std::string long_cell =
      write("long.csv", "epoch,phase," + std::string(size_t{2} << 20, 'x') + "\n").string();
  EXPECT_THAT([&] { plot_csv_log(long_cell, svg); },
              ThrowsMessage<Error>(HasSubstr(
                  long_cell + ":1: a record of more than 1048576 bytes, expected at most that")));
}

TEST_F(PlotTest, CsvLogThatIsAFifoIsRefusedWithoutBlocking) {
  const fs::path fifo = directory / "log.csv";
  testing_support::make_fifo(fifo);
  EXPECT_EQ(testing_support::error_reading_fifo(
                fifo, [&] { plot_csv_log(fifo.string(), (directory / "x.svg").string()); }),
            fifo.string() + ": not a regular file (a FIFO)");
}

TEST_F(PlotTest, CommandLineTool) {
  // The tool is built beside the tests: build/tests/plot_test, build/tools/.
  const fs::path tool = fs::read_symlink("/proc/self/exe").parent_path().parent_path() /
                        "tools" / "trainloop-plot";
  ASSERT_TRUE(fs::exists(tool)) << tool << " is missing: build the trainloop-plot target";
  const fs::path log = write("log.csv",
                             "epoch,batch,phase,step,lr,loss\n"
                             "1,1,train,1,0.1,2\n"
                             "2,1,train,2,0.1,1\n");
  std::string output;
  EXPECT_EQ(run(tool.string() + " " + log.string() + " -o " + (directory / "c.svg").string(), output), 0)
      << output;
  EXPECT_EQ(summarize(directory / "c.svg"),
            nlohmann::json::parse(R"([{"title": "loss", "series": {"training": 2}}])"));
  // Without -o the SVG goes beside the log.
  EXPECT_EQ(run(tool.string() + " " + log.string(), output), 0) << output;
  EXPECT_TRUE(fs::exists(directory / "log.svg"));

  const fs::path bad = write("bad.csv", "epoch,batch,phase,step,lr,loss\n1,1,train,1,0.1,x\n");
  EXPECT_EQ(run(tool.string() + " " + bad.string() + " -o " + (directory / "d.svg").string(), output), 1);
  EXPECT_EQ(output, "trainloop-plot: " + bad.string() +
                        ":2:6: \"x\" in column \"loss\" is not a number\n");
  EXPECT_EQ(run(tool.string() + " --no-such-flag " + log.string(), output), 2) << output;
  EXPECT_EQ(run(tool.string(), output), 2) << output;
}

}  // namespace
}  // namespace trainloop::callbacks
