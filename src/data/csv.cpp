#include "trainloop/data/csv.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../io/csv_records.h"
#include "../io/files.h"
#include "trainloop/error.h"

namespace trainloop::data {
namespace {

using io::CsvField;
using io::CsvRecords;

constexpr size_t kMaxShownBytes = 40;
constexpr size_t kMaxListedNames = 20;

// A cell or a name as an error message shows it: in quotes, cut after 40
// bytes, control bytes escaped, so that the message stays on one line.
std::string shown(std::string_view text) {
  std::string out = "\"";
  const size_t length = std::min(text.size(), kMaxShownBytes);
  for (size_t i = 0; i < length; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(c);
    }
  }
  out += text.size() > length ? "...\"" : "\"";
  return out;
}

std::string_view trimmed(std::string_view text) {
  const auto blank = [](char c) { return c == ' ' || c == '\t'; };
  while (!text.empty() && blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && blank(text.back())) text.remove_suffix(1);
  return text;
}

enum class Number { ok, not_a_number, not_finite, out_of_range };

// from_chars reads the same in every locale (strtod would read "1,5" as 1.5
// under a German locale). It takes no leading '+', so that is skipped here.
Number parse_number(std::string_view text, double& value) {
  if (!text.empty() && text.front() == '+') {
    text.remove_prefix(1);
    if (text.empty() || text.front() == '+' || text.front() == '-') return Number::not_a_number;
  }
  const char* end = text.data() + text.size();
  const auto [stop, code] = std::from_chars(text.data(), end, value);
  if (code == std::errc::result_out_of_range) return Number::out_of_range;
  if (code != std::errc() || stop != end) return Number::not_a_number;
  if (!std::isfinite(value)) return Number::not_finite;
  if (std::fabs(value) > std::numeric_limits<float>::max()) return Number::out_of_range;
  return Number::ok;
}

// What the reader knows about the table's columns, for the messages.
struct Layout {
  std::string source;
  bool header = true;
  int64_t header_line = 1;  // the header, or the first row without one
  std::vector<std::string> names;

  std::string column(size_t index) const {
    return header ? fmt::format("column {} {}", index + 1, shown(names[index]))
                  : fmt::format("column {}", index + 1);
  }
  std::string where(int64_t line, size_t index) const {
    return fmt::format("{}:{}:{}", source, line, index + 1);
  }
};

void check_options(std::string_view text, const std::string& source, const CsvOptions& options) {
  const char delimiter = options.delimiter();
  if (delimiter == '"' || delimiter == '\r' || delimiter == '\n') {
    throw Error(fmt::format("{}: delimiter {}, expected a character other than a quote, CR or LF",
                            source, shown(std::string_view(&delimiter, 1))));
  }
  const auto at_least = [&](const char* name, int64_t value, int64_t minimum) {
    if (value < minimum) {
      throw Error(fmt::format("{}: {} {}, expected {} or more", source, name, value, minimum));
    }
  };
  at_least("skip_lines", options.skip_lines(), 0);
  at_least("max_columns", options.max_columns(), 1);
  at_least("max_classes", options.max_classes(), 1);
  at_least("max_bytes", options.max_bytes(), 0);
  if (text.size() > static_cast<uint64_t>(options.max_bytes())) {
    throw Error(fmt::format("{}: {} bytes, expected at most max_bytes {}", source, text.size(),
                            options.max_bytes()));
  }
  const auto unique = [&](const std::vector<std::string>& names, const char* what) {
    for (size_t i = 0; i < names.size(); ++i) {
      for (size_t j = 0; j < i; ++j) {
        if (names[i] == names[j]) {
          throw Error(fmt::format("{}: {} {} named twice, expected each once", source, what,
                                  shown(names[i])));
        }
      }
    }
  };
  unique(options.features(), "feature column");
  unique(options.class_names(), "class");
  const auto contains = [](const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  const std::string& label = options.label();
  if (!label.empty() && contains(options.drop(), label)) {
    throw Error(fmt::format("{}: column {} is both the label and dropped, expected one of them",
                            source, shown(label)));
  }
  if (!label.empty() && contains(options.features(), label)) {
    throw Error(fmt::format("{}: column {} is both the label and a feature, expected one of them",
                            source, shown(label)));
  }
  for (const std::string& feature : options.features()) {
    if (contains(options.drop(), feature)) {
      throw Error(fmt::format("{}: column {} is both a feature and dropped, expected one of them",
                              source, shown(feature)));
    }
  }
  if (options.labels() == Labels::regression && !options.class_names().empty()) {
    throw Error(fmt::format("{}: class_names given for Labels::regression, expected them only "
                            "for classes",
                            source));
  }
  if (static_cast<int64_t>(options.class_names().size()) > options.max_classes()) {
    throw Error(fmt::format("{}: {} class names, expected at most max_classes {}", source,
                            options.class_names().size(), options.max_classes()));
  }
}

// The column names: the header's, or "1", "2", … without one.
Layout read_layout(CsvRecords& records, const std::string& source, const CsvOptions& options) {
  Layout layout;
  layout.source = source;
  layout.header = options.header();
  const auto max_columns = static_cast<size_t>(options.max_columns());
  if (!records.next(max_columns)) {
    if (options.header()) {
      throw Error(fmt::format("{}:{}: no header row, expected a line of column names", source,
                              records.line()));
    }
    throw Error(fmt::format("{}:{}: no rows, expected at least one", source, records.line()));
  }
  layout.header_line = records.record_line();
  if (records.field_count() > max_columns) {
    throw Error(fmt::format("{}:{}: more than {} columns, expected at most max_columns {}", source,
                            layout.header_line, max_columns, max_columns));
  }
  std::unordered_map<std::string_view, size_t> seen;
  for (size_t i = 0; i < records.field_count(); ++i) {
    layout.names.emplace_back(
        options.header() ? std::string(trimmed(records.field(i).value())) : std::to_string(i + 1));
  }
  for (size_t i = 0; i < layout.names.size(); ++i) {
    const auto [it, added] = seen.emplace(layout.names[i], i);
    if (!added) {
      throw Error(fmt::format("{}: {} has the name of column {}, expected unique column names",
                              layout.where(records.field(i).line, i), shown(layout.names[i]),
                              it->second + 1));
    }
  }
  return layout;
}

// Which columns are read, and as what.
struct Columns {
  std::optional<size_t> label;
  std::vector<size_t> features;
};

std::string listed_names(const Layout& layout) {
  std::string list;
  const size_t count = std::min(layout.names.size(), kMaxListedNames);
  for (size_t i = 0; i < count; ++i) list += (i > 0 ? ", " : "") + shown(layout.names[i]);
  if (layout.names.size() > count) list += fmt::format(", ... ({} in all)", layout.names.size());
  return list;
}

size_t find_column(const Layout& layout, const std::string& name, const char* role) {
  const auto it = std::find(layout.names.begin(), layout.names.end(), name);
  if (it != layout.names.end()) return static_cast<size_t>(it - layout.names.begin());
  if (layout.header) {
    throw Error(fmt::format("{}:{}: no {} column {} in the header, expected one of {}",
                            layout.source, layout.header_line, role, shown(name),
                            listed_names(layout)));
  }
  throw Error(fmt::format("{}:{}: no {} column {}, expected a column number from 1 to {} (the "
                          "table has no header row)",
                          layout.source, layout.header_line, role, shown(name),
                          layout.names.size()));
}

Columns resolve_columns(const Layout& layout, const CsvOptions& options) {
  Columns columns;
  if (!options.label().empty()) columns.label = find_column(layout, options.label(), "label");
  std::vector<bool> dropped(layout.names.size(), false);
  for (const std::string& name : options.drop()) dropped[find_column(layout, name, "dropped")] = true;
  if (!options.features().empty()) {
    for (const std::string& name : options.features()) {
      columns.features.push_back(find_column(layout, name, "feature"));
    }
    return columns;
  }
  for (size_t i = 0; i < layout.names.size(); ++i) {
    if (!dropped[i] && columns.label != i) columns.features.push_back(i);
  }
  if (columns.features.empty()) {
    throw Error(fmt::format("{}:{}: no feature columns left besides the label and the dropped "
                            "ones, expected at least one",
                            layout.source, layout.header_line));
  }
  return columns;
}

// Collects rows as they are read; turns labels into targets at the end.
class TableBuilder {
 public:
  TableBuilder(const Layout& layout, const Columns& columns, const CsvOptions& options)
      : layout_(layout), columns_(columns), options_(options) {
    for (size_t i = 0; i < options.class_names().size(); ++i) {
      given_classes_.emplace(options.class_names()[i], static_cast<int64_t>(i));
    }
    row_.resize(columns.features.size());
  }

  void add(const CsvRecords& records) {
    check_width(records);
    bool missing = false;
    for (size_t f = 0; f < columns_.features.size(); ++f) {
      const size_t column = columns_.features[f];
      const CsvField& field = records.field(column);
      const std::string_view value = trimmed(field.value());
      if (is_missing(value)) {
        if (options_.missing() == MissingValues::error) {
          throw Error(fmt::format("{}: missing value in {}, expected a number (or "
                                  "MissingValues::drop_row or fill_mean)",
                                  layout_.where(field.line, column), layout_.column(column)));
        }
        missing = true;
        row_[f] = std::numeric_limits<float>::quiet_NaN();  // filled at the end
        continue;
      }
      row_[f] = static_cast<float>(number(value, field.line, column));
    }
    std::string_view label;
    if (columns_.label) {
      const size_t column = *columns_.label;
      const CsvField& field = records.field(column);
      label = trimmed(field.value());
      label_line_ = field.line;
      if (is_missing(label)) {
        if (options_.missing() != MissingValues::drop_row) {
          throw Error(fmt::format("{}: missing label in {}, expected a value (or "
                                  "MissingValues::drop_row)",
                                  layout_.where(field.line, column), layout_.column(column)));
        }
        ++dropped_;
        return;
      }
    }
    if (missing && options_.missing() == MissingValues::drop_row) {
      ++dropped_;
      return;
    }
    if (columns_.label) add_label(label);
    features_.insert(features_.end(), row_.begin(), row_.end());
    lines_.push_back(records.record_line());
  }

  CsvTable finish() {
    const auto rows = static_cast<int64_t>(lines_.size());
    if (rows == 0) {
      if (dropped_ > 0) {
        throw Error(fmt::format("{}: all {} rows have missing values, expected at least one "
                                "complete row",
                                layout_.source, dropped_));
      }
      throw Error(fmt::format("{}:{}: no rows after the header, expected at least one",
                              layout_.source, layout_.header_line));
    }
    if (options_.missing() == MissingValues::fill_mean) fill_means();
    CsvTable table;
    const auto width = static_cast<int64_t>(columns_.features.size());
    torch::Tensor inputs =
        torch::from_blob(features_.data(), {rows, width}, torch::kFloat32).clone();
    torch::Tensor targets;
    if (columns_.label) {
      table.label_name = layout_.names[*columns_.label];
      if (options_.labels() == Labels::regression) {
        targets = torch::from_blob(values_.data(), {rows}, torch::kFloat32).clone();
      } else {
        table.class_names = class_names();
        targets = torch::from_blob(classes_.data(), {rows}, torch::kInt64).clone();
      }
    }
    table.dataset = TensorDataset(std::move(inputs), std::move(targets));
    for (const size_t column : columns_.features) table.feature_names.push_back(layout_.names[column]);
    table.lines = std::move(lines_);
    table.dropped_rows = dropped_;
    return table;
  }

 private:
  void check_width(const CsvRecords& records) const {
    const size_t width = layout_.names.size();
    const size_t count = records.field_count();
    if (count == width) return;
    const char* first = layout_.header ? "the header" : "the first row";
    if (count > width) {
      throw Error(fmt::format("{}: more than {} cells in this row, expected {} as in {} on line {}",
                              layout_.where(records.field(width).line, width), width, width,
                              first, layout_.header_line));
    }
    throw Error(fmt::format("{}: the row ends after {} cells, expected {} as in {} on line {}",
                            layout_.where(records.field(count - 1).line, count), count, width,
                            first, layout_.header_line));
  }

  bool is_missing(std::string_view value) const {
    if (value.empty()) return true;
    const auto& markers = options_.missing_markers();
    return std::find(markers.begin(), markers.end(), value) != markers.end();
  }

  double number(std::string_view value, int64_t line, size_t column) const {
    double parsed = 0;
    switch (parse_number(value, parsed)) {
      case Number::ok: return parsed;
      case Number::not_a_number:
        throw Error(fmt::format("{}: {} in {} is not a number, expected a number",
                                layout_.where(line, column), shown(value), layout_.column(column)));
      case Number::not_finite:
        throw Error(fmt::format("{}: {} in {} is not finite, expected a finite number",
                                layout_.where(line, column), shown(value), layout_.column(column)));
      case Number::out_of_range: break;
    }
    throw Error(fmt::format("{}: {} in {} is out of range, expected a number within float32's "
                            "range (magnitude at most 3.4e38)",
                            layout_.where(line, column), shown(value), layout_.column(column)));
  }

  void add_label(std::string_view label) {
    const size_t column = *columns_.label;
    switch (options_.labels()) {
      case Labels::regression:
        values_.push_back(static_cast<float>(number(label, label_line_, column)));
        return;
      case Labels::class_indices: classes_.push_back(class_index(label, column)); return;
      case Labels::classes: break;
    }
    if (!given_classes_.empty()) {
      const auto it = given_classes_.find(std::string(label));
      if (it == given_classes_.end()) {
        throw Error(fmt::format("{}: label {} in {} is not one of the {} class names, expected "
                                "one of them",
                                layout_.where(label_line_, column), shown(label),
                                layout_.column(column), given_classes_.size()));
      }
      classes_.push_back(it->second);
      return;
    }
    const auto [it, added] =
        distinct_.emplace(std::string(label), static_cast<int64_t>(distinct_.size()));
    if (added && static_cast<int64_t>(distinct_.size()) > options_.max_classes()) {
      throw Error(fmt::format("{}: more than {} distinct labels in {}, expected at most "
                              "max_classes {} (a numeric target? use Labels::regression)",
                              layout_.where(label_line_, column), options_.max_classes(),
                              layout_.column(column), options_.max_classes()));
    }
    classes_.push_back(it->second);
  }

  int64_t class_index(std::string_view label, size_t column) {
    const int64_t bound = options_.class_names().empty()
                              ? options_.max_classes()
                              : static_cast<int64_t>(options_.class_names().size());
    double value = 0;
    if (parse_number(label, value) != Number::ok || value < 0 || value >= bound ||
        std::floor(value) != value) {
      throw Error(fmt::format("{}: {} in {} is not a class index, expected a whole number from 0 "
                              "to {}",
                              layout_.where(label_line_, column), shown(label),
                              layout_.column(column), bound - 1));
    }
    const auto index = static_cast<int64_t>(value);
    largest_index_ = std::max(largest_index_, index);
    return index;
  }

  // Renumbers the labels in sorted order and names the classes.
  std::vector<std::string> class_names() {
    if (options_.labels() == Labels::class_indices) {
      if (!options_.class_names().empty()) return options_.class_names();
      std::vector<std::string> names;
      for (int64_t i = 0; i <= largest_index_; ++i) names.push_back(std::to_string(i));
      return names;
    }
    if (!options_.class_names().empty()) return options_.class_names();
    std::vector<int64_t> renumbered(distinct_.size());
    std::vector<std::string> names;
    std::map<double, std::vector<int64_t>> by_value;
    bool numeric = true;
    for (const auto& [text, id] : distinct_) {
      double value = 0;
      if (parse_number(text, value) != Number::ok) {
        numeric = false;
        break;
      }
      by_value[value].push_back(id);
    }
    if (numeric) {
      for (const auto& [value, ids] : by_value) {
        for (const int64_t id : ids) renumbered[id] = static_cast<int64_t>(names.size());
        names.push_back(fmt::format("{}", value));
      }
    } else {
      std::map<std::string_view, int64_t> by_text;  // bytewise order
      for (const auto& [text, id] : distinct_) by_text.emplace(text, id);
      for (const auto& [text, id] : by_text) {
        renumbered[id] = static_cast<int64_t>(names.size());
        names.emplace_back(text);
      }
    }
    for (int64_t& label : classes_) label = renumbered[label];
    return names;
  }

  void fill_means() {
    const size_t width = columns_.features.size();
    const size_t rows = lines_.size();
    for (size_t f = 0; f < width; ++f) {
      double sum = 0;
      size_t present = 0;
      for (size_t r = 0; r < rows; ++r) {
        const float value = features_[r * width + f];
        if (std::isnan(value)) continue;
        sum += value;
        ++present;
      }
      if (present == rows) continue;
      if (present == 0) {
        const size_t column = columns_.features[f];
        throw Error(fmt::format("{}: {} has no values, expected at least one to fill its missing "
                                "cells with the mean",
                                layout_.source, layout_.column(column)));
      }
      const auto mean = static_cast<float>(sum / static_cast<double>(present));
      for (size_t r = 0; r < rows; ++r) {
        float& value = features_[r * width + f];
        if (std::isnan(value)) value = mean;
      }
    }
  }

  const Layout& layout_;
  const Columns& columns_;
  const CsvOptions& options_;
  std::unordered_map<std::string, int64_t> given_classes_;
  std::unordered_map<std::string, int64_t> distinct_;  // label text -> first-seen id
  std::vector<float> row_;
  std::vector<float> features_;  // row-major [rows, features]
  std::vector<int64_t> classes_;
  std::vector<float> values_;
  std::vector<int64_t> lines_;
  int64_t label_line_ = 0;
  int64_t largest_index_ = -1;
  int64_t dropped_ = 0;
};

// A whole number in [minimum, maximum] from a cell of the first line of a
// scikit-learn table.
int64_t whole_number(const CsvRecords& records, size_t index, const char* name, int64_t minimum,
                     int64_t maximum, const std::string& source) {
  const CsvField& field = records.field(index);
  const std::string_view text = trimmed(field.value());
  double value = 0;
  if (parse_number(text, value) != Number::ok || std::floor(value) != value || value < minimum ||
      value > maximum) {
    throw Error(fmt::format("{}:{}:{}: {} {}, expected a whole number from {} to {} (the first "
                            "line of a scikit-learn bundled table is "
                            "n_samples,n_features,<class names...>)",
                            source, field.line, index + 1, name, shown(text), minimum, maximum));
  }
  return static_cast<int64_t>(value);
}

// A table file, inflated when its name ends in ".gz".
std::string read_table_file(const std::string& path, int64_t max_bytes) {
  if (max_bytes < 0) {
    throw Error(fmt::format("{}: max_bytes {}, expected 0 or more", path, max_bytes));
  }
  io::ReadOptions options;
  options.max_bytes = static_cast<size_t>(max_bytes);
  options.gunzip = true;
  options.limit_name = "the max_bytes limit";
  return io::read_file(path, options);
}

}  // namespace

CsvTable parse_csv_table(std::string_view text, const std::string& source_name,
                         const CsvOptions& options) {
  check_options(text, source_name, options);
  CsvRecords records(text, options.delimiter(), source_name);
  records.skip_lines(options.skip_lines());
  const Layout layout = read_layout(records, source_name, options);
  const Columns columns = resolve_columns(layout, options);
  TableBuilder builder(layout, columns, options);
  // Without a header the first record is already a row.
  bool have_row = options.header() ? records.next(layout.names.size()) : true;
  while (have_row) {
    builder.add(records);
    have_row = records.next(layout.names.size());
  }
  return builder.finish();
}

CsvTable read_csv_table(const std::string& path, const CsvOptions& options) {
  const std::string text = read_table_file(path, options.max_bytes());
  return parse_csv_table(text, path, options);
}

CsvTable parse_sklearn_csv(std::string_view text, const std::string& source_name) {
  const CsvOptions defaults;
  check_options(text, source_name, defaults);
  CsvRecords records(text, ',', source_name);
  const auto max_classes = static_cast<size_t>(defaults.max_classes());
  constexpr const char* kExpected = "expected n_samples,n_features,<class names...>";
  if (!records.next(max_classes + 2)) {
    throw Error(fmt::format("{}:{}: no first line, {}", source_name, records.line(), kExpected));
  }
  const int64_t first_line = records.record_line();
  if (records.field_count() < 3) {
    throw Error(fmt::format("{}:{}: {} cells, {} (at least one class name)", source_name,
                            first_line, records.field_count(), kExpected));
  }
  if (records.field_count() > max_classes + 2) {
    throw Error(fmt::format("{}:{}: more than {} class names, expected at most {}", source_name,
                            first_line, max_classes, max_classes));
  }
  const int64_t samples = whole_number(records, 0, "n_samples", 1,
                                       std::numeric_limits<int32_t>::max(), source_name);
  const int64_t features =
      whole_number(records, 1, "n_features", 1, defaults.max_columns() - 1, source_name);
  std::vector<std::string> class_names;
  for (size_t i = 2; i < records.field_count(); ++i) {
    class_names.emplace_back(trimmed(records.field(i).value()));
  }
  const int64_t lines_before_rows = records.line() - 1;
  // Check the first row's width here, where the message can say where the
  // expected width comes from.
  const auto width = static_cast<size_t>(features + 1);
  if (!records.next(width)) {
    throw Error(fmt::format("{}:{}: no rows, expected the {} announced on line {}", source_name,
                            records.line(), samples, first_line));
  }
  if (records.field_count() != width) {
    throw Error(fmt::format("{}:{}: {}{} cells, expected {}: the {} features announced on line {} "
                            "and the class index",
                            source_name, records.record_line(),
                            records.field_count() > width ? "more than " : "",
                            std::min(records.field_count(), width), width, features, first_line));
  }
  CsvTable table = parse_csv_table(text, source_name,
                                   CsvOptions(std::to_string(width))
                                       .header(false)
                                       .skip_lines(lines_before_rows)
                                       .labels(Labels::class_indices)
                                       .class_names(class_names));
  if (table.dataset.size() != samples) {
    throw Error(fmt::format("{}: {} rows, expected the {} announced on line {}", source_name,
                            table.dataset.size(), samples, first_line));
  }
  return table;
}

CsvTable read_sklearn_csv(const std::string& path) {
  const std::string text = read_table_file(path, CsvOptions().max_bytes());
  return parse_sklearn_csv(text, path);
}

}  // namespace trainloop::data
