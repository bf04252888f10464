#include "trainloop/callbacks/progress.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "flush_timer.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

using Clock = std::chrono::steady_clock;

// Carriage return, then "erase the whole line", so a shorter line leaves no
// tail of the longer one it replaces.
constexpr const char* kRedraw = "\r\x1b[2K";

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// mm:ss below an hour, h:mm:ss above.
std::string format_duration(double seconds) {
  // Clamped so a wild estimate (or NaN) cannot overflow the integer cast.
  if (!(seconds >= 0)) seconds = 0;
  seconds = std::min(seconds, 1e9);
  const auto total = static_cast<int64_t>(seconds);
  const int64_t hours = total / 3600;
  const int64_t minutes = total / 60 % 60;
  const int64_t secs = total % 60;
  if (hours > 0) return fmt::format("{}:{:02}:{:02}", hours, minutes, secs);
  return fmt::format("{:02}:{:02}", minutes, secs);
}

std::string format_rate(int64_t samples, double seconds) {
  const double rate = seconds > 0 ? static_cast<double>(samples) / seconds : 0.0;
  // Whole numbers suit fast loops; a slow one (a big model) keeps three
  // significant digits instead of showing "0 samples/s".
  return rate >= 100 ? fmt::format("{:.0f}", rate) : fmt::format("{:.3g}", rate);
}

// "[=========>          ] 156/469", or just "156/469" without a bar.
std::string format_bar(int64_t done, int64_t total, int width) {
  std::string text;
  if (width > 0) {
    const int64_t filled =
        total > 0 ? std::clamp<int64_t>(width * std::min(done, total) / total, 0, width) : 0;
    text.reserve(static_cast<size_t>(width) + 3);
    text += '[';
    text.append(static_cast<size_t>(filled), '=');
    if (filled < width) {
      text += done < total && done > 0 ? '>' : ' ';
      text.append(static_cast<size_t>(width - filled - 1), ' ');
    }
    text += "] ";
  }
  text += fmt::format("{}/{}", done, total);
  return text;
}

// " loss 0.5012 accuracy 0.8213", or nothing for a phase that has not run
// yet (its metrics are NaN then). Once the phase ran, a NaN is shown as
// "nan": a diverging loss must not vanish from the display.
std::string format_metrics(const std::vector<std::shared_ptr<Metric>>& metrics,
                           const char* prefix, bool phase_ran) {
  std::string text;
  if (!phase_ran) return text;
  for (const auto& metric : metrics) {
    fmt::format_to(std::back_inserter(text), " {}{} {:.4f}", prefix, metric->name(),
                   metric->compute());
  }
  return text;
}

// Columns of the terminal, or 0 when unknown (not a terminal, or one that
// reports no size, as a fresh pseudo-terminal does).
int terminal_columns(std::FILE* stream) {
  winsize size{};
  if (ioctl(fileno(stream), TIOCGWINSZ, &size) != 0) return 0;
  return size.ws_col;
}

/// Progress of one pass over a data source within the current epoch or run.
struct Pass {
  int64_t done = 0;
  int64_t total = 0;
  int64_t samples = 0;
  Clock::time_point start;
  std::optional<Clock::time_point> end;

  void reset(int64_t batch_count, Clock::time_point now) {
    done = 0;
    total = batch_count;
    samples = 0;
    start = now;
    end.reset();
  }
  double seconds(Clock::time_point now) const { return seconds_between(start, end.value_or(now)); }
  // Remaining time extrapolated from the pace so far; nullopt before the
  // first batch, when there is no pace yet.
  std::optional<double> eta(Clock::time_point now) const {
    if (done <= 0) return std::nullopt;
    const auto remaining = static_cast<double>(std::max<int64_t>(total - done, 0));
    return seconds(now) / static_cast<double>(done) * remaining;
  }
};

class Progress : public Callback {
 public:
  explicit Progress(ProgressOptions options) : options_(std::move(options)) {
    if (options_.stream() == nullptr) {
      throw Error("progress: stream is null, expected an open FILE*");
    }
    if (!(options_.refresh_seconds() >= 0)) {
      throw Error(fmt::format("progress: refresh_seconds is {}, expected >= 0",
                              options_.refresh_seconds()));
    }
    detail::check_flush_seconds("progress", options_.flush_seconds());
    if (options_.bar_width() < 0) {
      throw Error(fmt::format("progress: bar_width is {}, expected >= 0", options_.bar_width()));
    }
    terminal_ = options_.terminal().value_or(isatty(fileno(options_.stream())) != 0);
  }

  std::string state_key() const override { return "progress"; }
  bool rank_zero_only() const override { return true; }

  void on_event(Event event, TrainingLoop& loop) override {
    const LoopState& state = loop.state();
    switch (event) {
      case Event::fit_start:
        in_fit_ = true;
        flush_timer_.restart();
        break;
      case Event::epoch_start: {
        const auto now = Clock::now();
        epoch_start_ = last_draw_ = now;
        // training_start resets these again; doing it here too keeps the
        // counts right if a custom loop skips that event.
        training_.reset(0, now);
        validation_.reset(0, now);
        break;
      }
      case Event::training_start:
        training_.reset(state.batch_count, Clock::now());
        break;
      case Event::training_end:
        training_.end = Clock::now();
        break;
      case Event::validation_start: {
        const auto now = Clock::now();
        validation_.reset(state.batch_count, now);
        if (standalone(state.phase)) {
          // evaluate or predict run on their own: no epoch events frame them.
          end_line();
          run_start_ = last_draw_ = now;
        }
        break;
      }
      case Event::validation_end:
        if (standalone(state.phase)) {
          validation_.end = Clock::now();
          finish(run_line(state, *validation_.end, /*finished=*/true));
        }
        break;
      case Event::batch_end:
        on_batch_end(state);
        break;
      case Event::epoch_end:
        if (!in_fit_) break;
        finish(epoch_line(state, Clock::now(), /*finished=*/true),
               /*flush=*/terminal_ || flush_timer_.at_epoch_end());
        break;
      case Event::fit_end:
        // Runs after a cancel or an exception too, so nothing here may throw:
        // a partial line left open would glue the next output onto it.
        in_fit_ = false;
        end_line();
        std::fflush(options_.stream());
        break;
      default:
        break;
    }
  }

 private:
  static bool standalone(Phase phase) {
    return phase == Phase::evaluation || phase == Phase::prediction;
  }

  // Called for every batch, so it only counts and reads the clock; metrics
  // are read (a device sync) only when a redraw is due.
  void on_batch_end(const LoopState& state) {
    const bool training = state.phase == Phase::training;
    Pass& pass = training ? training_ : validation_;
    pass.done = state.batch + 1;
    pass.total = state.batch_count;
    if (state.inputs.defined() && state.inputs.dim() > 0) pass.samples += state.inputs.size(0);
    if (!terminal_) {
      if (flush_timer_.at_batch_end()) std::fflush(options_.stream());
      return;
    }
    const auto now = Clock::now();
    // The last training batch always shows the full bar, since validation
    // may take a while; the other passes' last batch is followed at once by
    // the finished line.
    const bool last_training_batch = training && pass.done >= pass.total;
    if (!last_training_batch && seconds_between(last_draw_, now) < options_.refresh_seconds()) {
      return;
    }
    const std::string line =
        standalone(state.phase) ? run_line(state, now, false) : epoch_line(state, now, false);
    draw(line, now);
  }

  // The epoch's line. While running it shows the running pass and its ETA;
  // finished, it keeps training and validation metrics and the epoch's time.
  std::string epoch_line(const LoopState& state, Clock::time_point now, bool finished) const {
    std::string line = fmt::format("epoch {}/{} ", state.epoch + 1, state.epoch_count);
    line += format_bar(training_.done, training_.total, options_.bar_width());
    line += format_metrics(state.training_metrics, "", training_.done > 0);
    const bool validating = !finished && state.phase == Phase::validation;
    if (validating) line += fmt::format(" | validating {}/{}", validation_.done, validation_.total);
    if (finished || validating) {
      line += format_metrics(state.validation_metrics, "val_", validation_.done > 0);
    }
    const Pass& pass = validating ? validation_ : training_;
    line += fmt::format(" | {} samples/s | {}", format_rate(pass.samples, pass.seconds(now)),
                        format_duration(seconds_between(epoch_start_, now)));
    if (!finished) append_eta(line, pass, now);
    return line;
  }

  // The line of a standalone evaluate or predict, e.g.
  // "evaluation [====>     ] 12/40 loss 0.4210 accuracy 0.8450 | 8000 samples/s | 00:01 < 00:03".
  std::string run_line(const LoopState& state, Clock::time_point now, bool finished) const {
    std::string line = fmt::format("{} ", to_string(state.phase));
    line += format_bar(validation_.done, validation_.total, options_.bar_width());
    line += format_metrics(state.phase_metrics(), "",
                           validation_.done > 0 && state.phase != Phase::prediction);
    line += fmt::format(" | {} samples/s | {}",
                        format_rate(validation_.samples, validation_.seconds(now)),
                        format_duration(seconds_between(run_start_, now)));
    if (!finished) append_eta(line, validation_, now);
    return line;
  }

  static void append_eta(std::string& line, const Pass& pass, Clock::time_point now) {
    if (const auto eta = pass.eta(now)) line += fmt::format(" < {}", format_duration(*eta));
  }

  // Replaces the current terminal line in place.
  void draw(std::string line, Clock::time_point now) {
    // A line wider than the terminal wraps, and "\r" then returns only to
    // the start of its last row, so the rows above would pile up.
    const int columns = terminal_columns(options_.stream());
    if (columns > 0 && line.size() >= static_cast<size_t>(columns)) line.resize(columns - 1);
    write(kRedraw);
    write(line);
    std::fflush(options_.stream());
    line_open_ = true;
    last_draw_ = now;
  }

  // Writes a finished line: over the in-place line on a terminal, as a plain
  // log line elsewhere.
  void finish(const std::string& line, bool flush = true) {
    if (terminal_) write(kRedraw);
    write(line);
    write("\n");
    if (flush) std::fflush(options_.stream());
    line_open_ = false;
  }

  void end_line() {
    if (!line_open_) return;
    write("\n");
    line_open_ = false;
  }

  // A progress display must never stop training: write errors (a closed
  // pipe, a full disk) are ignored.
  void write(const std::string& text) { std::fputs(text.c_str(), options_.stream()); }

  ProgressOptions options_;
  detail::FlushTimer flush_timer_{options_.flush_seconds()};
  bool terminal_ = false;
  bool in_fit_ = false;
  bool line_open_ = false;
  Clock::time_point epoch_start_;
  Clock::time_point run_start_;
  Clock::time_point last_draw_;
  Pass training_;
  Pass validation_;
};

}  // namespace

std::shared_ptr<Callback> progress(ProgressOptions options) {
  return std::make_shared<Progress>(std::move(options));
}

}  // namespace trainloop::callbacks
