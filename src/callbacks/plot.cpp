#include "trainloop/callbacks/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "../io/files.h"
#include "../svg/line_chart.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kValidationPrefix = "val_";

// "accuracy" for "val_accuracy".
std::string base_name(const std::string& name) {
  return name.rfind(kValidationPrefix, 0) == 0 ? name.substr(std::strlen(kValidationPrefix))
                                               : name;
}

// Per-epoch values of every metric, by base name ("loss" for both "loss" and
// "val_loss"), in the order the metrics were first seen.
struct History {
  std::vector<std::string> metrics;
  std::map<std::string, std::map<int64_t, double>> training;
  std::map<std::string, std::map<int64_t, double>> validation;

  void add_metric(const std::string& name) {
    if (std::find(metrics.begin(), metrics.end(), name) == metrics.end()) metrics.push_back(name);
  }
  // `name` as logged: "val_accuracy" is the validation value of "accuracy".
  void record(const std::string& name, bool validation_phase, int64_t epoch, double value) {
    const bool prefixed = name.rfind(kValidationPrefix, 0) == 0;
    const std::string base = base_name(name);
    add_metric(base);
    (prefixed || validation_phase ? validation : training)[base][epoch] = value;
  }
};

bool any_finite(const std::map<int64_t, double>& values) {
  return std::any_of(values.begin(), values.end(),
                     [](const auto& entry) { return std::isfinite(entry.second); });
}

svg::Series series(const std::string& name, const std::map<int64_t, double>& values,
                   bool dashed, size_t color) {
  svg::Series s;
  s.name = name;
  s.dashed = dashed;
  s.color = color;
  for (const auto& [epoch, value] : values) {
    s.x.push_back(static_cast<double>(epoch));
    s.y.push_back(value);
  }
  return s;
}

void write_chart(const History& history, const PlotOptions& options) {
  svg::Chart chart;
  chart.title = options.title();
  chart.columns = static_cast<size_t>(std::max<int64_t>(0, options.columns()));
  chart.panel_width = options.panel_width();
  chart.panel_height = options.panel_height();
  for (const auto& name : history.metrics) {
    svg::Panel panel;
    panel.title = name;
    panel.x_label = "epoch";
    panel.integer_x = true;
    const auto training = history.training.find(name);
    const auto validation = history.validation.find(name);
    // Training keeps its (colour, dash) even when a panel has only
    // validation values, so every panel reads the same way.
    if (training != history.training.end() || validation == history.validation.end()) {
      panel.series.push_back(series("training", training != history.training.end()
                                                    ? training->second
                                                    : std::map<int64_t, double>{},
                                    false, 0));
    }
    // A fit without validation data still reports val_ metrics (as NaN):
    // leave out a line that would never be drawn.
    if (validation != history.validation.end() && any_finite(validation->second)) {
      panel.series.push_back(series("validation", validation->second, true, 1));
    }
    chart.panels.push_back(std::move(panel));
  }
  io::write_atomically(options.path(), svg::render(chart));
}

class Plot : public Callback {
 public:
  explicit Plot(PlotOptions options) : options_(std::move(options)) {
    if (options_.path().empty()) throw Error("callbacks::plot: the SVG path is empty");
    if (options_.panel_width() < 200 || options_.panel_height() < 150) {
      throw Error(fmt::format("callbacks::plot: panel size {}x{}, expected at least 200x150",
                              options_.panel_width(), options_.panel_height()));
    }
  }

  void on_event(Event event, TrainingLoop& loop) override {
    const LoopState& state = loop.state();
    if (event != Event::fit_start && event != Event::epoch_end) return;
    // Drawn from the loop's history, so a resumed fit's chart has every
    // epoch. Written at fit_start too, so a bad path fails before any
    // training time is spent.
    History history;
    for (const auto& name : state.metric_names()) history.add_metric(base_name(name));
    for (size_t epoch = 0; epoch < state.history.size(); ++epoch) {
      for (const auto& [name, value] : state.history[epoch]) {
        history.record(name, false, static_cast<int64_t>(epoch) + 1, value);
      }
    }
    write_chart(history, options_);
  }

  std::string state_key() const override { return "plot"; }
  bool rank_zero_only() const override { return true; }
  std::vector<OutputPath> outputs() const override { return {{options_.path(), OutputKind::file}}; }

 private:
  PlotOptions options_;
};

// --- CSV log ---------------------------------------------------------------

struct Cell {
  std::string text;
  size_t line;  // 1-based line where the cell starts
};

// A CSV log's rows are short; a file beyond these is no log, and reading its
// records whole would take memory in proportion to its longest line.
constexpr size_t kMaxRecordBytes = size_t{1} << 20;
constexpr size_t kMaxCells = 10000;
constexpr size_t kBufferBytes = size_t{64} << 10;

// An RFC 4180 reader: cells separated by commas, records by LF or CRLF,
// quoted cells may hold commas, line breaks and doubled quotes. Streams the
// file through a small buffer, so memory is one record's, at most
// kMaxRecordBytes, whatever the file's size.
class CsvReader {
 public:
  CsvReader(std::string path, std::FILE* file) : path_(std::move(path)), file_(file) {}

  // The next record, or false at the end of the file.
  bool next(std::vector<Cell>& record, size_t& line) {
    record.clear();
    if (peek() == EOF) return false;
    line = line_;
    record_line_ = line_;
    record_bytes_ = 0;
    for (;;) {
      if (record.size() == kMaxCells) {
        throw Error(fmt::format("{}:{}: more than {} cells, expected at most that (a CSV log)",
                                path_, record_line_, kMaxCells));
      }
      Cell cell{std::string(), line_};
      if (peek() == '"') {
        const size_t column = record.size() + 1;
        get();
        for (;;) {
          const int c = get();
          if (c == EOF) {
            throw Error(fmt::format("{}:{}:{}: quoted cell is never closed", path_, cell.line,
                                    column));
          }
          if (c == '"') {
            if (peek() == '"') {
              cell.text += '"';
              get();
            } else {
              break;
            }
          } else {
            if (c == '\n') ++line_;
            cell.text += static_cast<char>(c);
          }
        }
        if (peek() != EOF && !is_end(peek())) {
          throw Error(fmt::format("{}:{}:{}: text after the closing quote", path_, line_, column));
        }
      } else {
        while (peek() != EOF && !is_end(peek())) {
          if (peek() == '"') {
            throw Error(fmt::format("{}:{}:{}: quote inside an unquoted cell", path_, line_,
                                    record.size() + 1));
          }
          cell.text += static_cast<char>(get());
        }
      }
      record.push_back(std::move(cell));
      const int c = get();
      if (c == EOF) return true;
      if (c == ',') continue;
      if (c == '\r' && peek() == '\n') get();
      ++line_;
      return true;
    }
  }

 private:
  static bool is_end(int c) { return c == ',' || c == '\n' || c == '\r'; }

  int peek() {
    if (at_ == end_ && !fill()) return EOF;
    return static_cast<unsigned char>(buffer_[at_]);
  }

  // Takes the next byte, counting it against the record's limit.
  int get() {
    const int c = peek();
    if (c == EOF) return c;
    ++at_;
    if (++record_bytes_ > kMaxRecordBytes) {
      throw Error(fmt::format("{}:{}: a record of more than {} bytes, expected at most that "
                              "(a CSV log's row)",
                              path_, record_line_, kMaxRecordBytes));
    }
    return c;
  }

  bool fill() {
    if (buffer_.empty()) buffer_.resize(kBufferBytes);
    at_ = 0;
    end_ = std::fread(buffer_.data(), 1, buffer_.size(), file_);
    if (end_ == 0 && std::ferror(file_)) {
      throw Error(fmt::format("{}: read error: {}", path_, std::strerror(errno)));
    }
    return end_ > 0;
  }

  std::string path_;
  std::FILE* file_;
  std::vector<char> buffer_;
  size_t at_ = 0;
  size_t end_ = 0;
  size_t line_ = 1;
  size_t record_line_ = 1;
  size_t record_bytes_ = 0;
};

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

// The log, opened for reading; a FIFO or a device is refused before an open
// that could block.
std::unique_ptr<std::FILE, FileCloser> open_log(const std::string& path) {
  const int fd = io::open_regular_file(path);
  std::unique_ptr<std::FILE, FileCloser> file(fdopen(fd, "rb"));
  if (!file) {
    const int error = errno;
    ::close(fd);
    throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(error)));
  }
  return file;
}

double parse_number(const std::string& text, bool& ok) {
  // from_chars is locale-independent and reads "nan", "inf" and "-inf" as
  // the logger writes them; it refuses a leading '+', which we allow.
  const char* first = text.data();
  const char* last = text.data() + text.size();
  if (first != last && *first == '+') ++first;
  double value = 0;
  const auto [end, error] = std::from_chars(first, last, value);
  ok = error == std::errc() && end == last && first != last;
  return value;
}

History read_csv_log(const std::string& path) {
  const auto file = open_log(path);
  CsvReader reader(path, file.get());

  constexpr const char* kExpected = "expected a header starting epoch,batch,phase,step,lr";
  std::vector<Cell> header;
  size_t line = 0;
  if (!reader.next(header, line)) throw Error(fmt::format("{}: empty file, {}", path, kExpected));
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < header.size(); ++i) index.emplace(header[i].text, i);
  for (const char* required : {"epoch", "phase"}) {
    if (index.count(required) == 0) {
      throw Error(fmt::format("{}:1: no column \"{}\", {}", path, required, kExpected));
    }
  }
  const size_t epoch_column = index["epoch"];
  const size_t phase_column = index["phase"];
  std::vector<size_t> metric_columns;
  History history;
  for (size_t i = 0; i < header.size(); ++i) {
    const std::string& name = header[i].text;
    if (name == "epoch" || name == "batch" || name == "phase" || name == "step" || name == "lr") {
      continue;
    }
    if (name.empty()) throw Error(fmt::format("{}:1:{}: empty column name", path, i + 1));
    metric_columns.push_back(i);
    history.add_metric(base_name(name));
  }

  std::vector<Cell> row;
  while (reader.next(row, line)) {
    if (row.size() == 1 && row[0].text.empty()) continue;  // blank line
    if (row.size() != header.size()) {
      throw Error(fmt::format("{}:{}: {} cells, expected {} as in the header", path, line,
                              row.size(), header.size()));
    }
    const Cell& epoch_cell = row[epoch_column];
    bool ok = false;
    const double epoch = parse_number(epoch_cell.text, ok);
    if (!ok || !(epoch >= 1) || epoch != std::floor(epoch) || epoch > 1e15) {
      throw Error(fmt::format("{}:{}:{}: epoch \"{}\", expected a whole number >= 1", path,
                              epoch_cell.line, epoch_column + 1, epoch_cell.text));
    }
    const Cell& phase_cell = row[phase_column];
    if (phase_cell.text != "train" && phase_cell.text != "validation") {
      throw Error(fmt::format("{}:{}:{}: phase \"{}\", expected train or validation", path,
                              phase_cell.line, phase_column + 1, phase_cell.text));
    }
    const bool validation = phase_cell.text == "validation";
    for (size_t column : metric_columns) {
      const Cell& cell = row[column];
      if (cell.text.empty()) continue;  // not logged in this phase
      const double value = parse_number(cell.text, ok);
      if (!ok) {
        throw Error(fmt::format("{}:{}:{}: \"{}\" in column \"{}\" is not a number", path,
                                cell.line, column + 1, cell.text, header[column].text));
      }
      // Later rows overwrite earlier ones: the last row of an (epoch, phase)
      // holds the epoch's value.
      history.record(header[column].text, validation, static_cast<int64_t>(epoch), value);
    }
  }
  return history;
}

}  // namespace

std::shared_ptr<Callback> plot(PlotOptions options) {
  return std::make_shared<Plot>(std::move(options));
}

void plot_csv_log(const std::string& csv_path, const PlotOptions& options) {
  write_chart(read_csv_log(csv_path), options);
}

}  // namespace trainloop::callbacks
