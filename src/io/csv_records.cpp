#include "csv_records.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "trainloop/error.h"

namespace trainloop::io {

namespace {

// How much a streaming reader asks for at a time.
constexpr size_t kReadBytes = size_t{64} << 10;

}  // namespace

CsvRecords::CsvRecords(std::string_view text, char delimiter, std::string source)
    : text_(text), delimiter_(delimiter), source_(std::move(source)) {}

CsvRecords::CsvRecords(Read read, char delimiter, std::string source, size_t max_record_bytes)
    : delimiter_(delimiter),
      source_(std::move(source)),
      read_(std::move(read)),
      max_record_bytes_(max_record_bytes) {}

bool CsvRecords::fill(size_t count) {
  while (text_.size() - pos_ < count) {
    if (at_end_) return false;
    if (in_record_ && text_.size() - record_start_ > max_record_bytes_) {
      throw Error(fmt::format("{}:{}: a record of more than {} bytes, expected at most that",
                              source_, record_line_, max_record_bytes_));
    }
    // Only the record being read is kept; what came before it is done with.
    const size_t done = in_record_ ? record_start_ : pos_;
    buffer_.erase(0, done);
    for (size_t* offset : {&pos_, &record_start_, &record_end_, &cell_start_, &segment_}) {
      *offset = *offset >= done ? *offset - done : 0;
    }
    for (size_t i = 0; i < count_; ++i) spans_[i].first -= std::min(spans_[i].first, done);
    const size_t kept = buffer_.size();
    buffer_.resize(kept + kReadBytes);
    const size_t got = read_(buffer_.data() + kept, kReadBytes);
    buffer_.resize(kept + got);
    text_ = buffer_;
    at_end_ = got == 0;
  }
  return true;
}

void CsvRecords::skip_byte_order_mark() {
  started_ = true;
  constexpr std::string_view kByteOrderMark = "\xef\xbb\xbf";
  has(kByteOrderMark.size());
  if (text_.substr(pos_, kByteOrderMark.size()) == kByteOrderMark) pos_ += kByteOrderMark.size();
}

bool CsvRecords::at_line_break() {
  return has(1) && (text_[pos_] == '\n' || text_[pos_] == '\r');
}

void CsvRecords::consume_line_break() {
  if (text_[pos_] == '\r' && has(2) && text_[pos_ + 1] == '\n') ++pos_;
  ++pos_;
  ++line_;
}

void CsvRecords::skip_lines(int64_t count) {
  if (!started_) skip_byte_order_mark();
  for (int64_t skipped = 0; skipped < count && has(1); ++skipped) {
    while (has(1) && !at_line_break()) ++pos_;
    if (has(1)) consume_line_break();
  }
}

bool CsvRecords::next(size_t max_fields) {
  if (!started_) skip_byte_order_mark();
  count_ = 0;
  while (at_line_break()) consume_line_break();
  if (!has(1)) return false;
  in_record_ = true;
  record_start_ = pos_;
  record_line_ = line_;
  while (true) {
    if (count_ == fields_.size()) {
      fields_.emplace_back();
      spans_.emplace_back();
    }
    CsvField& field = fields_[count_++];
    field.line = line_;
    field.escaped = false;
    // A delimiter at the end of a line opens one more, empty, cell: reading
    // an unquoted cell at a line break gives exactly that.
    field.quoted = has(1) && text_[pos_] == '"';
    if (field.quoted) {
      read_quoted(field);
    } else {
      read_unquoted();
    }
    if (count_ > max_fields) break;
    if (!has(1) || text_[pos_] != delimiter_) break;
    ++pos_;
  }
  record_end_ = pos_;
  if (count_ <= max_fields && has(1)) consume_line_break();
  finish_record();
  return true;
}

void CsvRecords::finish_record() {
  if (read_ && pos_ - record_start_ > max_record_bytes_) {
    throw Error(fmt::format("{}:{}: a record of more than {} bytes, expected at most that",
                            source_, record_line_, max_record_bytes_));
  }
  // The buffer no longer moves until the next call: the views can be made.
  for (size_t i = 0; i < count_; ++i) {
    if (!fields_[i].escaped) fields_[i].raw = text_.substr(spans_[i].first, spans_[i].second);
  }
  in_record_ = false;
}

void CsvRecords::read_unquoted() {
  cell_start_ = pos_;
  while (has(1) && text_[pos_] != delimiter_ && text_[pos_] != '\n' && text_[pos_] != '\r') ++pos_;
  spans_[count_ - 1] = {cell_start_, pos_ - cell_start_};
}

void CsvRecords::read_quoted(CsvField& field) {
  const int64_t open_line = line_;
  cell_start_ = ++pos_;  // after the opening quote
  segment_ = cell_start_;
  field.unescaped.clear();
  while (true) {
    if (!has(1)) {
      throw Error(fmt::format("{}:{}:{}: the quote that opens this cell is never closed, expected "
                              "a closing '\"' before the end of the text",
                              source_, open_line, count_));
    }
    const char c = text_[pos_];
    if (c == '"') {
      if (has(2) && text_[pos_ + 1] == '"') {
        // A doubled quote is one quote: copy up to and including the first.
        field.escaped = true;
        field.unescaped.append(text_.substr(segment_, pos_ + 1 - segment_));
        pos_ += 2;
        segment_ = pos_;
        continue;
      }
      if (field.escaped) {
        field.unescaped.append(text_.substr(segment_, pos_ - segment_));
      } else {
        spans_[count_ - 1] = {cell_start_, pos_ - cell_start_};
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
  while (has(1) && (text_[pos_] == ' ' || text_[pos_] == '\t') && text_[pos_] != delimiter_) {
    ++pos_;
  }
  if (has(1) && text_[pos_] != delimiter_ && !at_line_break()) {
    throw Error(fmt::format("{}:{}:{}: text after the closing quote of a quoted cell, expected "
                            "the delimiter or the end of the line",
                            source_, line_, count_));
  }
}

}  // namespace trainloop::io
