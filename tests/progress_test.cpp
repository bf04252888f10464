#include "trainloop/callbacks/progress.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using testing::HasSubstr;
using testing::Not;
using testing::StartsWith;
using testing::ThrowsMessage;

constexpr const char* kRedraw = "\r\x1b[2K";

// A finished epoch line of the 2-epoch fit; the groups are epoch, loss,
// accuracy, val_loss and val_accuracy. Timing and rate vary, so they are
// placeholders.
const std::regex kEpochLine(
    R"(epoch ([12])/2 \[=+\] 3/3 loss ([0-9.]+) accuracy ([0-9.]+) )"
    R"(val_loss ([0-9.]+) val_accuracy ([0-9.]+) \| [0-9.]+ samples/s \| \d\d:\d\d)");

// Everything written to a file so far, read through its descriptor: what
// is still in the FILE's buffer is not seen, so this also checks flushing.
std::string written(std::FILE* file) {
  struct stat info {};
  if (fstat(fileno(file), &info) != 0) return "<fstat failed>";
  std::string text(static_cast<size_t>(info.st_size), '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = pread(fileno(file), text.data() + got, text.size() - got,
                            static_cast<off_t>(got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  text.resize(got);
  return text;
}

std::vector<std::string> split(const std::string& text, const std::string& separator) {
  std::vector<std::string> parts;
  size_t from = 0;
  for (size_t at; (at = text.find(separator, from)) != std::string::npos;
       from = at + separator.size()) {
    parts.push_back(text.substr(from, at - from));
  }
  parts.push_back(text.substr(from));
  return parts;
}

size_t count(const std::string& text, const std::string& what) {
  return split(text, what).size() - 1;
}

// A pseudo-terminal whose slave end is the progress stream; a thread drains
// the master so a long output cannot fill the pty buffer and block the fit.
// Built from posix_openpt, which needs no extra library (openpty needs -lutil).
class PseudoTerminal {
 public:
  explicit PseudoTerminal(unsigned short columns = 0) {
    master_ = posix_openpt(O_RDWR | O_NOCTTY);
    if (master_ < 0 || grantpt(master_) != 0 || unlockpt(master_) != 0) {
      throw std::runtime_error("cannot open a pseudo-terminal");
    }
    const char* name = ptsname(master_);
    slave_ = name == nullptr ? -1 : open(name, O_RDWR | O_NOCTTY);
    if (slave_ < 0) throw std::runtime_error("cannot open the pseudo-terminal's slave");
    // Raw mode, so the terminal passes "\n" through instead of "\r\n".
    termios settings{};
    tcgetattr(slave_, &settings);
    cfmakeraw(&settings);
    tcsetattr(slave_, TCSANOW, &settings);
    if (columns > 0) {
      winsize size{};
      size.ws_row = 24;
      size.ws_col = columns;
      ioctl(master_, TIOCSWINSZ, &size);
    }
    stream_ = fdopen(slave_, "w");
    reader_ = std::thread([this] { drain(); });
  }
  PseudoTerminal(const PseudoTerminal&) = delete;
  PseudoTerminal& operator=(const PseudoTerminal&) = delete;
  ~PseudoTerminal() {
    stop();
    if (stream_ != nullptr) std::fclose(stream_);
    close(master_);
  }

  std::FILE* stream() const { return stream_; }

  /// Everything the terminal received; call after the fit.
  std::string output() {
    stop();
    return output_;
  }

 private:
  void stop() {
    done_ = true;
    if (reader_.joinable()) reader_.join();
  }

  void drain() {
    char buffer[4096];
    int quiet_after_done = 0;
    for (;;) {
      pollfd request{master_, POLLIN, 0};
      const int ready = poll(&request, 1, 100);
      if (ready > 0 && (request.revents & POLLIN) != 0) {
        const ssize_t n = read(master_, buffer, sizeof buffer);
        if (n <= 0) return;
        output_.append(buffer, static_cast<size_t>(n));
        continue;
      }
      if (ready != 0) return;
      // The kernel hands written bytes to the master asynchronously: stop
      // only after a whole quiet period that began after the fit ended.
      if (done_ && ++quiet_after_done >= 2) return;
    }
  }

  int master_ = -1;
  int slave_ = -1;
  std::FILE* stream_ = nullptr;
  std::thread reader_;
  std::atomic<bool> done_{false};
  std::string output_;
};

data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return data::TensorDataset(torch::randn({size, 4}), torch::randint(0, 3, {size}));
}

struct ProgressTest : testing::Test {
  torch::nn::Linear model{4, 3};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};
  // 3 training batches and 2 validation batches of 4.
  data::TensorDataset train = make_dataset(12, 1);
  data::TensorDataset valid = make_dataset(8, 2);
  std::FILE* file = std::tmpfile();

  ~ProgressTest() override {
    if (file != nullptr) std::fclose(file);
  }

  TrainingLoop make_loop(std::vector<std::shared_ptr<Callback>> callbacks,
                         bool validation = true) {
    return TrainingLoop(data::Epochs(train, 4).seed(3),
                        validation ? data::DataSource(data::Batches(valid, 4)) : nullptr,
                        optimizer, losses::cross_entropy, {metrics::accuracy()},
                        std::move(callbacks));
  }
};

// The loop's own metric values at each epoch_end, as the display prints them.
struct MetricCapture {
  std::vector<std::vector<std::string>> values;
  std::shared_ptr<Callback> callback() {
    return callbacks::lambda([this](Event event, TrainingLoop& loop) {
      if (event != Event::epoch_end) return;
      std::vector<std::string> epoch;
      for (const char* name : {"loss", "accuracy", "val_loss", "val_accuracy"}) {
        epoch.push_back(fmt::format("{:.4f}", loop.state().metric(name)));
      }
      values.push_back(epoch);
    });
  }
};

// Throws `exception` from batch_end of (epoch, batch), after the display drew it.
template <class Exception>
std::shared_ptr<Callback> throw_at(int64_t epoch, int64_t batch, Exception exception) {
  return callbacks::lambda([=](Event event, TrainingLoop& loop) {
    const LoopState& state = loop.state();
    if (event == Event::batch_end && state.phase == Phase::training && state.epoch == epoch &&
        state.batch == batch) {
      throw exception;
    }
  });
}

void expect_epoch_lines(const std::vector<std::string>& lines, const MetricCapture& capture) {
  ASSERT_EQ(lines.size(), 2u);
  ASSERT_EQ(capture.values.size(), 2u);
  for (size_t i = 0; i < lines.size(); ++i) {
    std::smatch match;
    ASSERT_TRUE(std::regex_match(lines[i], match, kEpochLine)) << lines[i];
    EXPECT_EQ(match[1], std::to_string(i + 1));
    for (size_t m = 0; m < 4; ++m) EXPECT_EQ(match[m + 2], capture.values[i][m]) << lines[i];
  }
}

TEST(ProgressOptionsTest, RejectsBadOptions) {
  using callbacks::ProgressOptions;
  EXPECT_THAT([] { callbacks::progress(ProgressOptions().refresh_seconds(-1)); },
              ThrowsMessage<Error>(HasSubstr("refresh_seconds is -1, expected >= 0")));
  EXPECT_THAT([] { callbacks::progress(ProgressOptions().bar_width(-2)); },
              ThrowsMessage<Error>(HasSubstr("bar_width is -2, expected >= 0")));
  EXPECT_THAT([] { callbacks::progress(ProgressOptions().stream(nullptr)); },
              ThrowsMessage<Error>(HasSubstr("stream is null")));
}

TEST_F(ProgressTest, PlainModeWritesOneLinePerEpoch) {
  ASSERT_NE(file, nullptr);
  MetricCapture capture;
  auto loop = make_loop({callbacks::progress(callbacks::ProgressOptions().stream(file)),
                         capture.callback()});
  ASSERT_EQ(loop.fit(model, 2), FitStatus::completed);

  const std::string text = written(file);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  std::vector<std::string> lines = split(text, "\n");
  lines.pop_back();  // after the last "\n"
  expect_epoch_lines(lines, capture);
}

TEST_F(ProgressTest, PlainModeLeavesOutMetricsOfPhasesThatDidNotRun) {
  auto loop = make_loop(
      {callbacks::progress(callbacks::ProgressOptions().stream(file).terminal(false))},
      /*validation=*/false);
  loop.fit(model, 1);
  const std::string text = written(file);
  EXPECT_TRUE(std::regex_match(
      text, std::regex(R"(epoch 1/1 \[=+\] 3/3 loss [0-9.]+ accuracy [0-9.]+ \| )"
                       R"([0-9.]+ samples/s \| \d\d:\d\d\n)")))
      << text;
}

TEST_F(ProgressTest, ANonFiniteLossStaysVisible) {
  auto loop = make_loop(
      {callbacks::progress(callbacks::ProgressOptions().stream(file).terminal(false))},
      /*validation=*/false);
  loop.step([](LoopState& state, const Model& m, const LossFunction& loss) {
    state.outputs = m(state.inputs);
    state.loss = loss(state.outputs, state.targets) * std::numeric_limits<double>::quiet_NaN();
  });
  loop.fit(model, 1);
  EXPECT_THAT(written(file), HasSubstr(" loss nan accuracy "));
}

TEST_F(ProgressTest, BarWidthSetsTheBar) {
  auto loop = make_loop({callbacks::progress(
      callbacks::ProgressOptions().stream(file).terminal(false).bar_width(0))});
  loop.fit(model, 1);
  EXPECT_THAT(written(file), StartsWith("epoch 1/1 3/3 loss "));

  std::FILE* wide = std::tmpfile();
  ASSERT_NE(wide, nullptr);
  auto wide_loop = make_loop({callbacks::progress(
      callbacks::ProgressOptions().stream(wide).terminal(false).bar_width(5))});
  wide_loop.fit(model, 1);
  EXPECT_THAT(written(wide), StartsWith("epoch 1/1 [=====] 3/3 loss "));
  std::fclose(wide);
}

TEST_F(ProgressTest, TerminalModeRedrawsInPlace) {
  PseudoTerminal terminal;
  MetricCapture capture;
  auto loop = make_loop({callbacks::progress(
                             callbacks::ProgressOptions().stream(terminal.stream()).terminal(true)
                                 .refresh_seconds(0)),
                         capture.callback()});
  ASSERT_EQ(loop.fit(model, 2), FitStatus::completed);
  const std::string text = terminal.output();

  ASSERT_THAT(text, StartsWith(kRedraw));
  EXPECT_EQ(count(text, "\n"), 2u);
  EXPECT_EQ(text.back(), '\n');
  // Every batch redraws: per epoch 3 training and 2 validation batches, then
  // the finished line.
  std::vector<std::string> draws = split(text, kRedraw);
  draws.erase(draws.begin());
  ASSERT_EQ(draws.size(), 12u) << text;
  std::vector<std::string> finished;
  for (size_t epoch = 0; epoch < 2; ++epoch) {
    const auto first = draws.begin() + static_cast<std::ptrdiff_t>(epoch * 6);
    const std::string prefix = fmt::format("epoch {}/2 [", epoch + 1);
    for (int batch = 1; batch <= 3; ++batch) {
      const std::string& draw = first[batch - 1];
      EXPECT_THAT(draw, StartsWith(prefix));
      EXPECT_THAT(draw, HasSubstr(fmt::format("] {}/3 loss ", batch)));
      EXPECT_THAT(draw, HasSubstr(" samples/s | "));
      EXPECT_THAT(draw, HasSubstr(" < "));  // the ETA
      EXPECT_THAT(draw, Not(HasSubstr("val_")));
      EXPECT_THAT(draw, Not(HasSubstr("\n")));
    }
    for (int batch = 1; batch <= 2; ++batch) {
      const std::string& draw = first[2 + batch];
      EXPECT_THAT(draw, StartsWith(prefix));
      EXPECT_THAT(draw, HasSubstr("] 3/3 loss "));
      EXPECT_THAT(draw, HasSubstr(fmt::format(" | validating {}/2 val_loss ", batch)));
      EXPECT_THAT(draw, Not(HasSubstr("\n")));
    }
    const std::string& last = first[5];
    ASSERT_EQ(last.back(), '\n');
    finished.push_back(last.substr(0, last.size() - 1));
  }
  expect_epoch_lines(finished, capture);
}

TEST_F(ProgressTest, DetectsTerminals) {
  PseudoTerminal terminal;
  using callbacks::ProgressOptions;
  auto loop = make_loop(
      {callbacks::progress(ProgressOptions().stream(terminal.stream()).refresh_seconds(0)),
       callbacks::progress(ProgressOptions().stream(file).refresh_seconds(0))});
  loop.fit(model, 2);
  EXPECT_THAT(terminal.output(), HasSubstr(kRedraw));
  const std::string plain = written(file);
  EXPECT_EQ(plain.find('\r'), std::string::npos);
  EXPECT_EQ(plain.find('\x1b'), std::string::npos);
  EXPECT_EQ(count(plain, "\n"), 2u);
}

TEST_F(ProgressTest, PlainModeCanBeForcedOnATerminal) {
  PseudoTerminal terminal;
  auto loop = make_loop({callbacks::progress(
      callbacks::ProgressOptions().stream(terminal.stream()).terminal(false).refresh_seconds(0))});
  loop.fit(model, 2);
  const std::string text = terminal.output();
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  EXPECT_EQ(count(text, "\n"), 2u);
}

TEST_F(ProgressTest, TerminalModeFitsRedrawsToTheTerminalWidth) {
  PseudoTerminal terminal(/*columns=*/40);
  auto loop = make_loop({callbacks::progress(
      callbacks::ProgressOptions().stream(terminal.stream()).refresh_seconds(0))});
  loop.fit(model, 1);
  std::vector<std::string> draws = split(terminal.output(), kRedraw);
  draws.erase(draws.begin());
  ASSERT_EQ(draws.size(), 6u);
  for (size_t i = 0; i + 1 < draws.size(); ++i) EXPECT_EQ(draws[i].size(), 39u) << draws[i];
  // The finished line is the log of the epoch: it is kept whole.
  EXPECT_GT(draws.back().size(), 40u);
}

TEST_F(ProgressTest, TerminalModeLimitsTheRedrawRate) {
  auto loop = make_loop({callbacks::progress(
      callbacks::ProgressOptions().stream(file).terminal(true).refresh_seconds(3600))});
  loop.fit(model, 2);
  const std::string text = written(file);
  // Per epoch: the last training batch (the full bar), then the finished line.
  EXPECT_EQ(count(text, "\r"), 4u) << text;
  EXPECT_EQ(count(text, kRedraw), 4u);
  std::vector<std::string> draws = split(text, kRedraw);
  draws.erase(draws.begin());
  for (const std::string& draw : draws) {
    EXPECT_THAT(draw, HasSubstr("] 3/3 loss "));
    EXPECT_THAT(draw, Not(HasSubstr("validating")));
  }
  EXPECT_THAT(draws[0], Not(HasSubstr("\n")));
  EXPECT_THAT(draws[1], HasSubstr("val_loss"));
  EXPECT_EQ(draws[1].back(), '\n');
}

// Off a terminal, the first epoch's line reaches the file at its epoch end;
// within flush_seconds the next ones wait in the stream's buffer, and the
// fit's end writes them.
TEST_F(ProgressTest, OffATerminalLinesAreFlushedAtMostOncePerFlushSeconds) {
  ASSERT_EQ(std::setvbuf(file, nullptr, _IOFBF, 1 << 16), 0);
  std::vector<size_t> lines_at_epoch_ends;
  auto loop = make_loop(
      {callbacks::progress(
           callbacks::ProgressOptions().stream(file).terminal(false).flush_seconds(3600)),
       callbacks::lambda([&](Event event, TrainingLoop&) {
         if (event == Event::epoch_end) lines_at_epoch_ends.push_back(count(written(file), "\n"));
       })});
  ASSERT_EQ(loop.fit(model, 3), FitStatus::completed);
  EXPECT_EQ(lines_at_epoch_ends, (std::vector<size_t>{1, 1, 1}));
  EXPECT_EQ(count(written(file), "\n"), 3u);

  std::vector<size_t> unthrottled;
  auto every_line = make_loop(
      {callbacks::progress(
           callbacks::ProgressOptions().stream(file).terminal(false).flush_seconds(0)),
       callbacks::lambda([&](Event event, TrainingLoop&) {
         if (event == Event::epoch_end) unthrottled.push_back(count(written(file), "\n"));
       })});
  ASSERT_EQ(every_line.fit(model, 3), FitStatus::completed);
  EXPECT_EQ(unthrottled, (std::vector<size_t>{4, 5, 6}));
}

TEST(ProgressOptionsTest, RejectsANegativeFlushInterval) {
  EXPECT_THAT([] { callbacks::progress(callbacks::ProgressOptions().flush_seconds(-0.5)); },
              ThrowsMessage<Error>(HasSubstr("progress: flush_seconds is -0.5, expected >= 0")));
}

TEST_F(ProgressTest, CancelledFitEndsThePartialLine) {
  // Fully buffered, so only the display's own flush makes the text visible.
  ASSERT_EQ(std::setvbuf(file, nullptr, _IOFBF, 1 << 16), 0);
  auto loop = make_loop(
      {callbacks::progress(
           callbacks::ProgressOptions().stream(file).terminal(true).refresh_seconds(0)),
       throw_at(1, 1, CancelFit())});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::cancelled);
  const std::string text = written(file);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(count(text, "\n"), 2u);
  const std::vector<std::string> draws = split(text, kRedraw);
  EXPECT_THAT(draws.back(), StartsWith("epoch 2/2 ["));
  EXPECT_THAT(draws.back(), HasSubstr("] 2/3 loss "));
}

TEST_F(ProgressTest, CancelledFitInPlainModeKeepsFinishedEpochs) {
  ASSERT_EQ(std::setvbuf(file, nullptr, _IOFBF, 1 << 16), 0);
  auto loop = make_loop({callbacks::progress(callbacks::ProgressOptions().stream(file)),
                         throw_at(1, 1, CancelFit())});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::cancelled);
  const std::string text = written(file);
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_EQ(text.find('\x1b'), std::string::npos);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  // Whether the cancelled epoch gets a (partial) line depends on whether the
  // loop runs epoch_end on a CancelFit; the finished epoch is there either way.
  std::vector<std::string> lines = split(text, "\n");
  lines.pop_back();
  ASSERT_GE(lines.size(), 1u);
  EXPECT_TRUE(std::regex_match(lines[0], kEpochLine)) << lines[0];
  for (size_t i = 1; i < lines.size(); ++i) EXPECT_THAT(lines[i], StartsWith("epoch 2/2 ["));
}

TEST_F(ProgressTest, FailedFitEndsThePartialLine) {
  ASSERT_EQ(std::setvbuf(file, nullptr, _IOFBF, 1 << 16), 0);
  auto loop = make_loop(
      {callbacks::progress(
           callbacks::ProgressOptions().stream(file).terminal(true).refresh_seconds(0)),
       throw_at(0, 1, std::runtime_error("boom"))});
  EXPECT_THROW(loop.fit(model, 2), Error);
  const std::string text = written(file);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  EXPECT_EQ(count(text, "\n"), 1u);
  EXPECT_THAT(split(text, kRedraw).back(), HasSubstr("] 2/3 loss "));
}

TEST_F(ProgressTest, EvaluateWritesAFinalLine) {
  auto loop = make_loop({callbacks::progress(callbacks::ProgressOptions().stream(file))});
  const std::map<std::string, double> result = loop.evaluate(model, data::Batches(valid, 4));
  const std::string text = written(file);
  std::smatch match;
  ASSERT_TRUE(std::regex_match(
      text, match,
      std::regex(R"(evaluation \[=+\] 2/2 loss ([0-9.]+) accuracy ([0-9.]+) \| )"
                 R"([0-9.]+ samples/s \| \d\d:\d\d\n)")))
      << text;
  EXPECT_EQ(match[1], fmt::format("{:.4f}", result.at("loss")));
  EXPECT_EQ(match[2], fmt::format("{:.4f}", result.at("accuracy")));
}

TEST_F(ProgressTest, EvaluateAndPredictShowProgressOnATerminal) {
  PseudoTerminal terminal;
  auto loop = make_loop({callbacks::progress(
      callbacks::ProgressOptions().stream(terminal.stream()).refresh_seconds(0))});
  loop.evaluate(model, data::Batches(valid, 4));
  loop.predict(model, data::Batches(valid, 4));
  std::vector<std::string> draws = split(terminal.output(), kRedraw);
  draws.erase(draws.begin());
  ASSERT_EQ(draws.size(), 6u);
  EXPECT_THAT(draws[0], StartsWith("evaluation [===============>"));
  EXPECT_THAT(draws[0], HasSubstr("] 1/2 loss "));
  EXPECT_THAT(draws[0], HasSubstr(" < "));
  EXPECT_THAT(draws[1], HasSubstr("] 2/2 loss "));
  EXPECT_THAT(draws[2], StartsWith("evaluation [==============================] 2/2 loss "));
  EXPECT_EQ(draws[2].back(), '\n');
  // Predictions have no targets, so no metrics.
  EXPECT_THAT(draws[3], StartsWith("prediction ["));
  EXPECT_THAT(draws[3], HasSubstr("] 1/2 | "));
  EXPECT_TRUE(std::regex_match(
      draws[5], std::regex(R"(prediction \[=+\] 2/2 \| [0-9.]+ samples/s \| \d\d:\d\d\n)")))
      << draws[5];
}

}  // namespace
}  // namespace trainloop
