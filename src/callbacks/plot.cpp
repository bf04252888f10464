#include "trainloop/callbacks/plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../io/csv_records.h"
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

// The next record of the log, its cells copied out, or false at the end. A
// log is written by csv_logger, which quotes every cell holding a quote, so
// a quote inside an unquoted cell means the file is something else.
bool next_record(io::CsvRecords& records, const std::string& path, std::vector<Cell>& record) {
  record.clear();
  if (!records.next(kMaxCells)) return false;
  if (records.field_count() > kMaxCells) {
    throw Error(fmt::format("{}:{}: more than {} cells, expected at most that (a CSV log)", path,
                            records.record_line(), kMaxCells));
  }
  for (size_t i = 0; i < records.field_count(); ++i) {
    const io::CsvField& field = records.field(i);
    if (!field.quoted && field.value().find('"') != std::string_view::npos) {
      throw Error(fmt::format("{}:{}:{}: quote inside an unquoted cell", path, field.line, i + 1));
    }
    record.push_back({std::string(field.value()), static_cast<size_t>(field.line)});
  }
  return true;
}

double parse_cell_number(const std::string& text, bool& ok) {
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
  // Streamed through a small buffer, so memory is one record's, at most
  // kMaxRecordBytes, whatever the file's size.
  io::InputFile file(path);
  io::CsvRecords reader([&file](char* buffer, size_t size) { return file.read(buffer, size); },
                        ',', path, kMaxRecordBytes);

  constexpr const char* kExpected = "expected a header starting epoch,batch,phase,step,lr";
  std::vector<Cell> header;
  if (!next_record(reader, path, header)) throw Error(fmt::format("{}: empty file, {}", path, kExpected));
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
  while (next_record(reader, path, row)) {
    const size_t line = static_cast<size_t>(reader.record_line());
    if (row.size() == 1 && row[0].text.empty()) continue;  // blank line
    if (row.size() != header.size()) {
      throw Error(fmt::format("{}:{}: {} cells, expected {} as in the header", path, line,
                              row.size(), header.size()));
    }
    const Cell& epoch_cell = row[epoch_column];
    bool ok = false;
    const double epoch = parse_cell_number(epoch_cell.text, ok);
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
      const double value = parse_cell_number(cell.text, ok);
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
