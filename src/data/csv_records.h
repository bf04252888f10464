#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trainloop::data::detail {

/// One cell of a CSV record.
struct CsvField {
  /// The cell's text, quotes removed and doubled quotes undone.
  std::string_view value() const { return escaped ? std::string_view(unescaped) : raw; }

  std::string_view raw;   // a view into the text, unless `escaped`
  std::string unescaped;  // a quoted cell that held doubled quotes
  bool escaped = false;
  int64_t line = 0;  // the physical line (1-based) the cell starts on
};

/// Splits CSV text into records (RFC 4180): cells separated by a delimiter,
/// records by LF, CRLF or CR; a cell that starts with a quote runs to the
/// matching quote and may hold delimiters, line breaks and doubled quotes.
/// A quote inside an unquoted cell is kept as text. Blank lines are skipped
/// and a leading UTF-8 byte order mark is ignored. One pass, no backtracking.
class CsvRecords {
 public:
  /// Reads `text`, which must outlive this object; `source` names it in errors.
  CsvRecords(std::string_view text, char delimiter, std::string source);

  /// Skips `count` physical lines.
  void skip_lines(int64_t count);
  /// Reads the next record, at most `max_fields` + 1 cells of it: a record
  /// with more stops there, so `field_count() > max_fields` says it is too
  /// long without reading it all. Returns false at the end of the text.
  /// Throws `Error` for a quote that is never closed or text after a
  /// closing quote, naming the line and the cell's column.
  bool next(size_t max_fields);

  /// Cells of the last record read.
  size_t field_count() const { return count_; }
  const CsvField& field(size_t index) const { return fields_[index]; }
  /// The physical line (1-based) the last record starts on.
  int64_t record_line() const { return record_line_; }
  /// The physical line the next read starts on.
  int64_t line() const { return line_; }

 private:
  bool at_line_break() const;
  void consume_line_break();
  void read_quoted(CsvField& field);
  void read_unquoted(CsvField& field);

  std::string_view text_;
  char delimiter_;
  std::string source_;
  size_t pos_ = 0;
  int64_t line_ = 1;
  int64_t record_line_ = 0;
  std::vector<CsvField> fields_;  // reused, so cells keep their buffers
  size_t count_ = 0;
};

}  // namespace trainloop::data::detail
