#include "trainloop/callbacks/csv_logger.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "../error_text.h"
#include "../io/csv_records.h"
#include "flush_timer.h"
#include "monitored_metric.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

// Rows are formatted into this buffer and reach the disk only when it is
// full or at a flush (see FlushTimer), so per-batch logging costs no system
// call.
constexpr size_t kBufferSize = size_t{1} << 20;

// Bounds how much of an existing file is read looking for its header, so a
// file that is not a CSV log (e.g. binary, no newline) is not read whole.
constexpr size_t kHeaderSlack = 4096;

void append_field(fmt::memory_buffer& out, std::string_view field) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) {
    out.append(field);
    return;
  }
  out.push_back('"');
  for (const char c : field) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
}

// fmt's "{}" is the shortest form that reads back to the same double and
// ignores the locale. NaN is spelled without a sign: "-nan" is not what
// readers expect, and the sign of a NaN carries nothing.
void append_number(fmt::memory_buffer& out, double value) {
  if (std::isnan(value)) {
    out.append(std::string_view("nan"));
  } else {
    fmt::format_to(std::back_inserter(out), "{}", value);
  }
}


// The first CSV record of `file` as it stands there (a newline inside quotes
// does not end it), without its line ending; reads at most `limit` bytes.
std::string first_record(std::FILE* file, size_t limit) {
  std::string text(limit, '\0');
  text.resize(std::fread(text.data(), 1, limit, file));
  io::CsvRecords records(text, ',', "");
  try {
    if (records.next(limit)) return std::string(records.record_text());
  } catch (const Error&) {
    // A quote not closed within the limit: no header this logger wrote,
    // shown as it is.
  }
  return text;
}

class CsvLogger : public Callback {
 public:
  explicit CsvLogger(CsvLoggerOptions options)
      : options_(std::move(options)), flush_timer_(options_.flush_seconds()) {
    if (options_.path().empty()) throw Error("csv_logger: path is empty, expected a file name");
    detail::check_flush_seconds("csv_logger", options_.flush_seconds());
    if (options_.every_n_batches() < 1) {
      throw Error(fmt::format("csv_logger: every_n_batches is {}, expected >= 1",
                              options_.every_n_batches()));
    }
  }

  ~CsvLogger() override {
    if (file_ != nullptr) std::fclose(file_);
  }

  // From the file, so two loggers of one fit keep their states apart.
  std::string state_key() const override { return "csv_logger:" + options_.path(); }
  bool rank_zero_only() const override { return true; }
  std::vector<OutputPath> outputs() const override { return {{options_.path(), OutputKind::file}}; }

  void on_event(Event event, TrainingLoop& loop) override {
    if (event == Event::fit_start) {
      open(loop.state());
      flush_timer_.restart();
      return;
    }
    if (file_ == nullptr) return;
    const LoopState& state = loop.state();
    switch (event) {
      case Event::training_start:
      case Event::validation_start:
        if (!logged(state.phase)) return;
        // A resumed fit starts inside the epoch with the counts load() set.
        if (state.batch > 0) return;
        batches_ended_ = 0;
        last_written_ = 0;
        return;
      case Event::batch_end:
        if (!logged(state.phase)) return;
        if (flush_timer_.at_batch_end()) flush();
        ++batches_ended_;
        if (options_.per_epoch()) return;
        // Integer checks only: a row that is not due must not read the metrics.
        if (state.batch + 1 >= state.batch_count) {
          // In a data-parallel fit the phase's last row waits for its end,
          // where the metrics are those of every rank.
          if (state.world_size == 1) write_row(state, state.batch + 1);
        } else if ((state.batch + 1) % options_.every_n_batches() == 0) {
          write_row(state, state.batch + 1);
        }
        return;
      case Event::training_end:
      case Event::validation_end:
        if (!logged(state.phase)) return;
        if (options_.per_epoch()) {
          write_row(state, batches_ended_);
        } else if (batches_ended_ > last_written_) {
          // A cancelled phase's last batch is its last row too; a finished
          // one's loop index has moved past the last batch.
          write_row(state, std::min(state.batch + 1, state.batch_count));
        }
        return;
      case Event::epoch_end:
        if (flush_timer_.at_epoch_end()) flush();
        return;
      case Event::fit_end:
        close();
        return;
      default:
        return;
    }
  }

  // The file's length now, after the rows written so far reached the disk:
  // a resume cuts the file back to it, dropping rows written after the
  // checkpoint, which the resumed fit writes again.
  void save(torch::serialize::OutputArchive& archive) const override {
    int64_t length = -1;
    if (file_ != nullptr) {
      if (std::fflush(file_) != 0) fail("cannot write", errno);
      fdatasync(fileno(file_));
      length = static_cast<int64_t>(std::ftell(file_));
    }
    archive.write("length", torch::tensor(length));
    archive.write("batches_ended", torch::tensor(batches_ended_));
    archive.write("last_written", torch::tensor(last_written_));
  }

  void load(torch::serialize::InputArchive& archive) override {
    const auto length = detail::read_scalar("csv_logger", archive, "length").item<int64_t>();
    batches_ended_ = detail::read_scalar("csv_logger", archive, "batches_ended").item<int64_t>();
    last_written_ = detail::read_scalar("csv_logger", archive, "last_written").item<int64_t>();
    if (file_ == nullptr || length < 0) return;
    std::fflush(file_);
    struct stat info {};
    if (fstat(fileno(file_), &info) != 0) fail("cannot stat", errno);
    if (!S_ISREG(info.st_mode)) return;
    if (info.st_size < length) {
      throw Error(fmt::format("{}: {} bytes, but the checkpoint was taken when it had {}: this is "
                              "not the log that fit wrote",
                              options_.path(), info.st_size, length));
    }
    if (ftruncate(fileno(file_), length) != 0) fail("cannot cut back to the checkpoint", errno);
    std::fseek(file_, 0, SEEK_END);
  }

 private:
  static bool logged(Phase phase) { return phase == Phase::training || phase == Phase::validation; }

  std::string header(const LoopState& state) const {
    fmt::memory_buffer out;
    out.append(std::string_view("epoch,batch,phase,step,lr"));
    for (const auto& metric : state.training_metrics) {
      out.push_back(',');
      append_field(out, metric->name());
    }
    return fmt::to_string(out);
  }

  [[noreturn]] void fail(const std::string& what, int error) const {
    throw Error(fmt::format("{}: {}: {}", options_.path(), what, trainloop::detail::errno_text(error)));
  }

  void open(const LoopState& state) {
    close_quietly();
    const std::filesystem::path path(options_.path());
    if (path.has_parent_path()) {
      std::error_code error;
      std::filesystem::create_directories(path.parent_path(), error);
      if (error) {
        throw Error(fmt::format("{}: cannot create directory {}: {}", options_.path(),
                                path.parent_path().string(), error.message()));
      }
    }
    // A logger that ran a fit before continues its own file, and so does a
    // resumed fit.
    const bool continuing = options_.append() || fits_ > 0 || !state.resumed_from.empty();
    errno = 0;
    file_ = std::fopen(options_.path().c_str(), continuing ? "a+" : "w");
    if (file_ == nullptr) fail("cannot open for writing", errno);
    // Before any other operation on the stream, as setvbuf requires.
    std::setvbuf(file_, nullptr, _IOFBF, kBufferSize);
    write_error_ = 0;
    ++fits_;

    const std::string expected = header(state);
    bool write_header = true;
    if (continuing) {
      struct stat info {};
      if (fstat(fileno(file_), &info) != 0) fail_and_close("cannot stat", errno);
      // Only a regular file has contents to continue (a device such as
      // /dev/full reports size 0 and would read forever).
      if (S_ISREG(info.st_mode) && info.st_size > 0) {
        write_header = false;
        std::rewind(file_);
        const std::string found = first_record(file_, expected.size() + kHeaderSlack);
        if (found != expected) {
          std::fclose(file_);
          file_ = nullptr;
          throw Error(fmt::format(
              "{}: cannot append: the file's header is \"{}\", expected \"{}\" "
              "(use CsvLoggerOptions::append(false) to overwrite, or another path)",
              options_.path(), found, expected));
        }
        // An interrupted write may have left a partial last line; end it so
        // the new rows start on a line of their own.
        std::fseek(file_, -1, SEEK_END);
        const bool ends_line = std::fgetc(file_) == '\n';
        // The stream switches from reading to writing: a seek must come between.
        std::fseek(file_, 0, SEEK_END);
        if (!ends_line) write(std::string_view("\n"));
      }
    }
    if (write_header) {
      write(expected);
      write(std::string_view("\n"));
    }
  }

  void write(std::string_view text) {
    errno = 0;
    if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() && write_error_ == 0) {
      write_error_ = errno != 0 ? errno : EIO;
    }
  }

  void write_row(const LoopState& state, int64_t batch) {
    row_.clear();
    auto out = std::back_inserter(row_);
    fmt::format_to(out, "{},{},{},{},", state.epoch + 1, batch,
                   state.phase == Phase::training ? "train" : "validation", state.global_step);
    if (state.optimizer != nullptr && !state.optimizer->param_groups().empty()) {
      append_number(row_, state.learning_rate());
    }
    const auto& metrics =
        state.phase == Phase::training ? state.training_metrics : state.validation_metrics;
    for (const auto& metric : metrics) {
      row_.push_back(',');
      append_number(row_, metric->compute());
    }
    row_.push_back('\n');
    write(std::string_view(row_.data(), row_.size()));
    last_written_ = batches_ended_;
  }

  // Reports a failed write or flush once, then drops the file: the rows
  // that follow could not reach it either.
  void flush() {
    errno = 0;
    const bool flushed = std::fflush(file_) == 0;
    int error = write_error_;
    if (error == 0 && !flushed) error = errno != 0 ? errno : EIO;
    if (error == 0 && std::ferror(file_)) error = EIO;
    if (error != 0) fail_and_close("cannot write", error);
  }

  void close() {
    flush();
    errno = 0;
    const bool closed = std::fclose(file_) == 0;
    const int error = errno;
    file_ = nullptr;
    if (!closed) fail("cannot close", error);
  }

  [[noreturn]] void fail_and_close(const std::string& what, int error) {
    close_quietly();
    fail(what, error);
  }

  void close_quietly() {
    if (file_ != nullptr) std::fclose(file_);
    file_ = nullptr;
  }

  CsvLoggerOptions options_;
  std::FILE* file_ = nullptr;
  detail::FlushTimer flush_timer_;
  int write_error_ = 0;
  int64_t fits_ = 0;
  // Batches that reached batch_end in the running phase, and that count
  // when its last row was written.
  int64_t batches_ended_ = 0;
  int64_t last_written_ = 0;
  fmt::memory_buffer row_;
};

}  // namespace

std::shared_ptr<Callback> csv_logger(CsvLoggerOptions options) {
  return std::make_shared<CsvLogger>(std::move(options));
}

}  // namespace trainloop::callbacks
