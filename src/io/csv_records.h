#pragma once

// The library's one CSV tokenizer: the CSV table reader, the plot tool's log
// reader and the CSV logger's header check all split records here.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace trainloop::io {

/// One cell of a CSV record.
struct CsvField {
  /// The cell's text, quotes removed and doubled quotes undone.
  std::string_view value() const { return escaped ? std::string_view(unescaped) : raw; }

  std::string_view raw;   // a view into the text, unless `escaped`
  std::string unescaped;  // a quoted cell that held doubled quotes
  bool escaped = false;
  bool quoted = false;  // the cell started with a quote
  int64_t line = 0;     // the physical line (1-based) the cell starts on
};

/// Splits CSV text into records (RFC 4180): cells separated by a delimiter,
/// records by LF, CRLF or CR; a cell that starts with a quote runs to the
/// matching quote and may hold delimiters, line breaks and doubled quotes.
/// A quote inside an unquoted cell is kept as text (`CsvField::quoted` lets
/// a stricter caller refuse it). Blank lines are skipped and a leading UTF-8
/// byte order mark is ignored. One pass, no backtracking.
class CsvRecords {
 public:
  /// Hands over up to `size` bytes into `buffer`; 0 at the end.
  using Read = std::function<size_t(char* buffer, size_t size)>;

  /// Reads `text`, which must outlive this object; `source` names it in errors.
  CsvRecords(std::string_view text, char delimiter, std::string source);
  /// Reads what `read` hands over, holding one record at a time, so memory
  /// stays one record's whatever the input's size. A record of more than
  /// `max_record_bytes` (its line break included) is an error:
  /// "log.csv:1: a record of more than 1048576 bytes, expected at most that".
  CsvRecords(Read read, char delimiter, std::string source, size_t max_record_bytes);

  /// Skips `count` physical lines.
  void skip_lines(int64_t count);
  /// Reads the next record, at most `max_fields` + 1 cells of it: a record
  /// with more stops there, so `field_count() > max_fields` says it is too
  /// long without reading it all. Returns false at the end of the text.
  /// Throws `Error` for a quote that is never closed or text after a
  /// closing quote, naming the line and the cell's column. The cells and
  /// record_text() stay valid until the next call.
  bool next(size_t max_fields);

  /// Cells of the last record read.
  size_t field_count() const { return count_; }
  const CsvField& field(size_t index) const { return fields_[index]; }
  /// The last record as it stands in the text, without its line break.
  std::string_view record_text() const {
    return text_.substr(record_start_, record_end_ - record_start_);
  }
  /// The physical line (1-based) the last record starts on.
  int64_t record_line() const { return record_line_; }
  /// The physical line the next read starts on.
  int64_t line() const { return line_; }

 private:
  // Whether `count` bytes from pos_ on are in text_, reading more if need be.
  bool has(size_t count) {
    return text_.size() - pos_ >= count || (read_ && fill(count));
  }
  bool fill(size_t count);
  bool at_line_break();
  void consume_line_break();
  void skip_byte_order_mark();
  void read_quoted(CsvField& field);
  void read_unquoted();
  void finish_record();

  std::string_view text_;
  char delimiter_;
  std::string source_;
  size_t pos_ = 0;
  int64_t line_ = 1;
  int64_t record_line_ = 0;
  std::vector<CsvField> fields_;  // reused, so cells keep their buffers
  size_t count_ = 0;
  bool started_ = false;

  // Offsets into text_, moved along when fill() drops what was read.
  size_t record_start_ = 0;
  size_t record_end_ = 0;
  size_t cell_start_ = 0;  // the cell being read
  size_t segment_ = 0;     // start of quoted text not yet copied to `unescaped`
  std::vector<std::pair<size_t, size_t>> spans_;  // each cell's raw text, until next() ends
  bool in_record_ = false;

  // Streaming only: where the text comes from, and the buffer text_ views.
  Read read_;
  std::string buffer_;
  size_t max_record_bytes_ = 0;
  bool at_end_ = false;
};

}  // namespace trainloop::io
