#include "../src/io/csv_records.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "trainloop/error.h"

namespace trainloop::io {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

// Each record as its cells, "|"-joined, with the line it starts on and its
// text as it stands: what a test compares.
struct Record {
  int64_t line;
  std::string cells;
  std::string text;
  bool operator==(const Record& other) const {
    return line == other.line && cells == other.cells && text == other.text;
  }
};

std::ostream& operator<<(std::ostream& out, const Record& record) {
  return out << record.line << ": " << record.cells << " [" << record.text << "]";
}

std::vector<Record> read_all(CsvRecords& records) {
  std::vector<Record> out;
  while (records.next(100)) {
    Record record{records.record_line(), "", std::string(records.record_text())};
    for (size_t i = 0; i < records.field_count(); ++i) {
      record.cells += (i > 0 ? "|" : "") + std::string(records.field(i).value());
    }
    out.push_back(record);
  }
  return out;
}

// A reader handing over `piece` bytes at a time, so every refill boundary
// falls somewhere inside a cell, a doubled quote or a CRLF.
CsvRecords::Read pieces_of(const std::string& text, size_t piece) {
  return [text, piece, at = size_t{0}](char* buffer, size_t size) mutable {
    const size_t count = std::min({piece, size, text.size() - at});
    std::memcpy(buffer, text.data() + at, count);
    at += count;
    return count;
  };
}

TEST(CsvRecordsTest, StreamingReadsWhatTheWholeTextReads) {
  const std::string text =
      "\xef\xbb\xbf"
      "a,\"b \"\"q\"\"\",c\r\n"
      "\n"
      "1,\"two\nlines\",3\r"
      "4,,\"\"\n"
      "\"x\" ,y,z";
  CsvRecords whole(text, ',', "t.csv");
  const std::vector<Record> expected = read_all(whole);
  ASSERT_EQ(expected, (std::vector<Record>{{1, "a|b \"q\"|c", "a,\"b \"\"q\"\"\",c"},
                                           {3, "1|two\nlines|3", "1,\"two\nlines\",3"},
                                           {5, "4||", "4,,\"\""},
                                           {6, "x|y|z", "\"x\" ,y,z"}}));
  for (const size_t piece : {1, 2, 3, 7, 64}) {
    CsvRecords streamed(pieces_of(text, piece), ',', "t.csv", 1000);
    EXPECT_EQ(read_all(streamed), expected) << piece << " bytes at a time";
  }
}

TEST(CsvRecordsTest, TellsQuotedCellsFromUnquotedOnes) {
  CsvRecords records(std::string_view("\"a\",b\"c"), ',', "t.csv");
  ASSERT_TRUE(records.next(10));
  EXPECT_TRUE(records.field(0).quoted);
  EXPECT_FALSE(records.field(1).quoted);
  EXPECT_EQ(records.field(1).value(), "b\"c");
}

TEST(CsvRecordsTest, StreamingStopsAtTheRecordLimit) {
  const std::string text = "a,b\n" + std::string(5000, 'x') + "\nc\n";
  CsvRecords records(pieces_of(text, 100), ',', "log.csv", 1000);
  ASSERT_TRUE(records.next(10));
  EXPECT_THAT([&] { records.next(10); },
              ThrowsMessage<Error>(HasSubstr(
                  "log.csv:2: a record of more than 1000 bytes, expected at most that")));
  // A record just under the limit, line break included, passes.
  const std::string fits = std::string(999, 'y') + "\n";
  CsvRecords exact(pieces_of(fits, 100), ',', "log.csv", 1000);
  ASSERT_TRUE(exact.next(10));
  EXPECT_EQ(exact.field(0).value().size(), 999u);
  EXPECT_FALSE(exact.next(10));
}

TEST(CsvRecordsTest, StreamingErrorsNameLineAndColumn) {
  CsvRecords open(pieces_of("a,b\n1,\"2\n3\n", 2), ',', "t.csv", 1000);
  ASSERT_TRUE(open.next(10));
  EXPECT_THAT([&] { open.next(10); },
              ThrowsMessage<Error>(HasSubstr(
                  "t.csv:2:2: the quote that opens this cell is never closed")));
  CsvRecords after(pieces_of("\"a\"x,b\n", 1), ',', "t.csv", 1000);
  EXPECT_THAT([&] { after.next(10); },
              ThrowsMessage<Error>(HasSubstr("t.csv:1:1: text after the closing quote")));
}

}  // namespace
}  // namespace trainloop::io
