#include "csv_records.h"

#include <fmt/format.h>

#include <utility>

#include "trainloop/error.h"

namespace trainloop::data::detail {

CsvRecords::CsvRecords(std::string_view text, char delimiter, std::string source)
    : text_(text), delimiter_(delimiter), source_(std::move(source)) {
  constexpr std::string_view kByteOrderMark = "\xef\xbb\xbf";
  if (text_.substr(0, kByteOrderMark.size()) == kByteOrderMark) pos_ = kByteOrderMark.size();
}

bool CsvRecords::at_line_break() const {
  return pos_ < text_.size() && (text_[pos_] == '\n' || text_[pos_] == '\r');
}

void CsvRecords::consume_line_break() {
  if (text_[pos_] == '\r' && pos_ + 1 < text_.size() && text_[pos_ + 1] == '\n') ++pos_;
  ++pos_;
  ++line_;
}

void CsvRecords::skip_lines(int64_t count) {
  for (int64_t skipped = 0; skipped < count && pos_ < text_.size(); ++skipped) {
    while (pos_ < text_.size() && !at_line_break()) ++pos_;
    if (pos_ < text_.size()) consume_line_break();
  }
}

bool CsvRecords::next(size_t max_fields) {
  count_ = 0;
  while (at_line_break()) consume_line_break();
  if (pos_ >= text_.size()) return false;
  record_line_ = line_;
  while (true) {
    if (count_ == fields_.size()) fields_.emplace_back();
    CsvField& field = fields_[count_++];
    field.line = line_;
    field.escaped = false;
    // A delimiter at the end of a line opens one more, empty, cell: reading
    // an unquoted cell at a line break gives exactly that.
    if (pos_ < text_.size() && text_[pos_] == '"') {
      read_quoted(field);
    } else {
      read_unquoted(field);
    }
    if (count_ > max_fields) return true;
    if (pos_ < text_.size() && text_[pos_] == delimiter_) {
      ++pos_;
      continue;
    }
    if (pos_ < text_.size()) consume_line_break();
    return true;
  }
}

void CsvRecords::read_unquoted(CsvField& field) {
  const size_t start = pos_;
  while (pos_ < text_.size() && text_[pos_] != delimiter_ && !at_line_break()) ++pos_;
  field.raw = text_.substr(start, pos_ - start);
}

void CsvRecords::read_quoted(CsvField& field) {
  const int64_t open_line = line_;
  const size_t start = ++pos_;  // after the opening quote
  size_t segment = start;       // start of text not yet copied to `unescaped`
  field.unescaped.clear();
  while (true) {
    if (pos_ >= text_.size()) {
      throw Error(fmt::format("{}:{}:{}: the quote that opens this cell is never closed, expected "
                              "a closing '\"' before the end of the text",
                              source_, open_line, count_));
    }
    const char c = text_[pos_];
    if (c == '"') {
      if (pos_ + 1 < text_.size() && text_[pos_ + 1] == '"') {
        // A doubled quote is one quote: copy up to and including the first.
        field.escaped = true;
        field.unescaped.append(text_.substr(segment, pos_ + 1 - segment));
        pos_ += 2;
        segment = pos_;
        continue;
      }
      if (field.escaped) {
        field.unescaped.append(text_.substr(segment, pos_ - segment));
      } else {
        field.raw = text_.substr(start, pos_ - start);
      }
      ++pos_;
      break;
    }
    if (c == '\n' || c == '\r') {
      // Line breaks stay in the cell; they only move the line count.
      consume_line_break();
    } else {
      ++pos_;
    }
  }
  // Spaces after the closing quote are tolerated; anything else is an error.
  while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t') &&
         text_[pos_] != delimiter_) {
    ++pos_;
  }
  if (pos_ < text_.size() && text_[pos_] != delimiter_ && !at_line_break()) {
    throw Error(fmt::format("{}:{}:{}: text after the closing quote of a quoted cell, expected "
                            "the delimiter or the end of the line",
                            source_, line_, count_));
  }
}

}  // namespace trainloop::data::detail
