#include "trainloop/tensorboard/event_writer.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/tensorboard/crc32c.h"
#include "trainloop/error.h"

namespace trainloop::tensorboard {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;

// A fresh directory, removed with everything in it at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string name = (fs::temp_directory_path() / "trainloop-event-writer-XXXXXX").string();
    if (mkdtemp(name.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = name;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// ---- the independent reader: tests/python/tfevents.py ----

const std::string kTool = TRAINLOOP_SOURCE_DIR "/tests/python/tfevents.py";

struct ToolResult {
  int status = -1;
  std::string output;  // stdout
  std::string errors;  // stderr
};

ToolResult run_tfevents(const std::string& arguments) {
  TempDir scratch;
  const fs::path errors = scratch.path / "stderr";
  const std::string command =
      fmt::format("'{}' '{}' {} 2>'{}'", TRAINLOOP_PYTHON, kTool, arguments, errors.string());
  ToolResult result;
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;)
    result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.errors = read_file(errors);
  return result;
}

struct Row {
  std::string run;
  std::string tag;
  int64_t step = 0;
  double wall_time = 0;
  std::optional<double> value;  // none for histograms and text
};

// Lines of `--tsv`: run, tag, step, wall_time, value (Python repr, "None").
std::vector<Row> parse_tsv(const std::string& text) {
  std::vector<Row> rows;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> cells;
    std::istringstream fields(line);
    for (std::string cell; std::getline(fields, cell, '\t');) cells.push_back(cell);
    if (cells.size() != 5) throw std::runtime_error("bad tsv line: " + line);
    Row row{cells[0], cells[1], std::stoll(cells[2]), std::stod(cells[3]), std::nullopt};
    if (cells[4] != "None") row.value = std::stod(cells[4]);
    rows.push_back(row);
  }
  return rows;
}

// ---- our own reader of the framing and of the few messages ----

uint64_t little_endian(const std::string& bytes, size_t at, int size) {
  uint64_t value = 0;
  for (int i = size - 1; i >= 0; --i)
    value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

struct Framing {
  std::vector<std::string> records;  // the complete records
  size_t end = 0;                    // where the last complete record ends
  bool damaged = false;              // a complete-looking record with a bad CRC
};

// Reads records until the data ends or holds only part of the next one.
Framing read_records(const std::string& data) {
  Framing framing;
  size_t at = 0;
  while (data.size() - at >= 12) {
    const uint64_t length = little_endian(data, at, 8);
    if (mask_crc32c(crc32c(data.data() + at, 8)) != little_endian(data, at + 8, 4)) {
      framing.damaged = true;
      break;
    }
    if (data.size() - at - 12 < length + 4) break;
    const std::string payload = data.substr(at + 12, length);
    if (mask_crc32c(crc32c(payload)) != little_endian(data, at + 12 + length, 4)) {
      framing.damaged = true;
      break;
    }
    framing.records.push_back(payload);
    at += 16 + length;
    framing.end = at;
  }
  return framing;
}

struct Field {
  int number = 0;
  int wire_type = 0;
  uint64_t varint = 0;  // wire types 0, 1 and 5 (fixed values as raw bits)
  std::string bytes;    // wire type 2
};

std::vector<Field> parse_message(const std::string& message) {
  std::vector<Field> fields;
  size_t at = 0;
  auto varint = [&] {
    uint64_t value = 0;
    for (int shift = 0;; shift += 7) {
      if (at >= message.size() || shift > 63) throw std::runtime_error("bad varint");
      const auto byte = static_cast<unsigned char>(message[at++]);
      value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return value;
    }
  };
  while (at < message.size()) {
    const uint64_t key = varint();
    Field field;
    field.number = static_cast<int>(key >> 3);
    field.wire_type = static_cast<int>(key & 7);
    switch (field.wire_type) {
      case 0:
        field.varint = varint();
        break;
      case 1:
        field.varint = little_endian(message, at, 8);
        at += 8;
        break;
      case 5:
        field.varint = little_endian(message, at, 4);
        at += 4;
        break;
      case 2: {
        const uint64_t size = varint();
        field.bytes = message.substr(at, size);
        at += size;
        break;
      }
      default:
        throw std::runtime_error("unexpected wire type");
    }
    if (at > message.size()) throw std::runtime_error("field runs past the message");
    fields.push_back(field);
  }
  return fields;
}

const Field& only(const std::vector<Field>& fields, int number) {
  const Field* found = nullptr;
  for (const Field& field : fields) {
    if (field.number != number) continue;
    if (found != nullptr) throw std::runtime_error(fmt::format("field {} twice", number));
    found = &field;
  }
  if (found == nullptr) throw std::runtime_error(fmt::format("no field {}", number));
  return *found;
}

double as_double(const Field& field) {
  double value = 0;
  std::memcpy(&value, &field.varint, sizeof value);
  return value;
}

std::vector<double> packed_doubles(const Field& field) {
  std::vector<double> values(field.bytes.size() / 8);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint64_t bits = little_endian(field.bytes, i * 8, 8);
    std::memcpy(&values[i], &bits, sizeof(double));
  }
  return values;
}

// The one Summary.Value of an Event record.
std::vector<Field> summary_value(const std::string& record) {
  const std::vector<Field> event = parse_message(record);
  const Field& summary = only(event, 5);
  return parse_message(only(parse_message(summary.bytes), 1).bytes);
}

// A reader that cannot run fails the test: it is never skipped.
#define REQUIRE_TOOL()                                                                   \
  ASSERT_TRUE(fs::exists(kTool)) << kTool << " is missing from the source tree";         \
  ASSERT_TRUE(fs::exists(TRAINLOOP_PYTHON)) << "no Python to run " << kTool << " with (" \
                                            << TRAINLOOP_PYTHON << "): install python3"

TEST(EventWriterTest, NamesFilesLikeTensorFlowAndKeepsThemApart) {
  TempDir dir;
  EventWriter first((dir.path / "new" / "run").string());
  EventWriter second((dir.path / "new" / "run").string());
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::regex name(fmt::format(
      R"(events\.out\.tfevents\.(\d+)\.{}\.{}\.\d+)",
      std::regex_replace(host, std::regex(R"([.^$|()\[\]{{}}*+?\\])"), R"(\$&)"), getpid()));
  for (const EventWriter* writer : {&first, &second}) {
    const fs::path path(writer->path());
    EXPECT_EQ(path.parent_path(), dir.path / "new" / "run");
    std::smatch match;
    const std::string file = path.filename().string();
    ASSERT_TRUE(std::regex_match(file, match, name)) << file;
    EXPECT_NEAR(std::stod(match[1]), EventWriter::now(), 60);
  }
  EXPECT_NE(first.path(), second.path());
}

TEST(EventWriterTest, StartsWithTheFileVersionRecord) {
  TempDir dir;
  EventWriter writer(dir.path.string(), "events.out.tfevents.test");
  // Flushed by the constructor: the file is readable at once.
  const std::string bytes = read_file(writer.path());
  const Framing framing = read_records(bytes);
  ASSERT_EQ(framing.records.size(), 1u);
  EXPECT_EQ(framing.end, bytes.size());
  EXPECT_EQ(bytes.substr(0, 12), std::string("\x18\0\0\0\0\0\0\0\xa3\x7f\x4b\x22", 12));
  const std::vector<Field> event = parse_message(framing.records[0]);
  ASSERT_EQ(event.size(), 2u);  // wall_time, file_version; step 0 is left out
  EXPECT_EQ(event[0].number, 1);
  EXPECT_NEAR(as_double(event[0]), EventWriter::now(), 60);
  EXPECT_EQ(event[1].number, 3);
  EXPECT_EQ(event[1].bytes, "brain.Event:2");
}

TEST(EventWriterTest, TfeventsDecodesEveryValue) {
  REQUIRE_TOOL();
  TempDir dir;
  {
    EventWriter writer(dir.path.string());
    writer.add_scalar("loss", 0.5, 1, 1700000000.5);
    writer.add_scalar("loss", 0.1, 2, 1700000001.0);
    writer.add_scalar("big_step", -2.5, int64_t{1} << 40);
    writer.add_scalar("negative_step", 3e-5, -3);
    writer.add_scalar("not_a_number", std::numeric_limits<double>::quiet_NaN(), 4);
    writer.add_histogram("weights", torch::randn({10, 3}), 3);
    writer.add_text("notes", "**lr** = 0.1\n\nsecond paragraph", 0);
    writer.close();
  }
  const ToolResult result = run_tfevents("--strict --tsv '" + dir.path.string() + "'");
  ASSERT_EQ(result.status, 0) << result.errors;
  const std::vector<Row> rows = parse_tsv(result.output);
  struct Expected {
    const char* tag;
    int64_t step;
    std::optional<double> value;
  };
  const std::vector<Expected> expected = {
      {"loss", 1, 0.5},
      {"loss", 2, 0.1},
      {"big_step", int64_t{1} << 40, -2.5},
      {"negative_step", -3, 3e-5},
      {"not_a_number", 4, std::numeric_limits<double>::quiet_NaN()},
      {"weights", 3, std::nullopt},
      {"notes", 0, std::nullopt}};
  ASSERT_EQ(rows.size(), expected.size()) << result.output;
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(rows[i].tag);
    EXPECT_EQ(rows[i].run, ".");
    EXPECT_EQ(rows[i].tag, expected[i].tag);
    EXPECT_EQ(rows[i].step, expected[i].step);
    ASSERT_EQ(rows[i].value.has_value(), expected[i].value.has_value());
    if (!expected[i].value) continue;
    // simple_value is a float: the decoded number is the float nearest the value.
    if (std::isnan(*expected[i].value)) {
      EXPECT_TRUE(std::isnan(*rows[i].value));
    } else {
      EXPECT_EQ(*rows[i].value, static_cast<double>(static_cast<float>(*expected[i].value)));
    }
  }
  EXPECT_EQ(rows[0].wall_time, 1700000000.5);
  EXPECT_EQ(rows[1].wall_time, 1700000001.0);
  EXPECT_NEAR(rows[2].wall_time, EventWriter::now(), 60);
}

TEST(EventWriterTest, HistogramHoldsTheValuesStatisticsAndBuckets) {
  TempDir dir;
  EventWriter writer(dir.path.string(), "events.out.tfevents.histogram");
  const double inf = std::numeric_limits<double>::infinity();
  // Range 30, so the 30 buckets are exactly 1 wide; non-finite values are left out.
  writer.add_histogram("h", torch::tensor({-10.0, -9.5, 0.0, 5.0, 20.0, std::nan(""), inf}), 7);
  writer.add_histogram("constant", torch::zeros({2, 2}, torch::kFloat16), 8);
  writer.add_histogram("empty", torch::empty({0}), 9);
  writer.flush();
  const Framing framing = read_records(read_file(writer.path()));
  ASSERT_EQ(framing.records.size(), 4u);
  EXPECT_EQ(only(parse_message(framing.records[1]), 2).varint, 7u);

  auto histogram = [&](size_t record, const std::string& tag) {
    const std::vector<Field> value = summary_value(framing.records[record]);
    EXPECT_EQ(only(value, 1).bytes, tag);
    return parse_message(only(value, 5).bytes);
  };
  const std::vector<Field> h = histogram(1, "h");
  EXPECT_EQ(as_double(only(h, 1)), -10.0);
  EXPECT_EQ(as_double(only(h, 2)), 20.0);
  EXPECT_EQ(as_double(only(h, 3)), 5.0);
  EXPECT_EQ(as_double(only(h, 4)), 5.5);
  EXPECT_EQ(as_double(only(h, 5)), 615.25);
  std::vector<double> limits(30);
  std::vector<double> counts(30, 0.0);
  for (int i = 0; i < 30; ++i) limits[i] = -9.0 + i;
  counts[0] = 2;   // -10, -9.5
  counts[10] = 1;  // 0
  counts[15] = 1;  // 5
  counts[29] = 1;  // 20, the maximum, in the last bucket
  EXPECT_EQ(packed_doubles(only(h, 6)), limits);
  EXPECT_EQ(packed_doubles(only(h, 7)), counts);

  const std::vector<Field> constant = histogram(2, "constant");
  EXPECT_EQ(as_double(only(constant, 1)), 0.0);
  EXPECT_EQ(as_double(only(constant, 2)), 0.0);
  EXPECT_EQ(as_double(only(constant, 3)), 4.0);
  EXPECT_EQ(packed_doubles(only(constant, 6)), std::vector<double>{0.0});
  EXPECT_EQ(packed_doubles(only(constant, 7)), std::vector<double>{4.0});

  const std::vector<Field> empty = histogram(3, "empty");
  EXPECT_EQ(as_double(only(empty, 3)), 0.0);
  EXPECT_EQ(packed_doubles(only(empty, 7)), std::vector<double>{0.0});
}

TEST(EventWriterTest, TextIsAStringTensorOfTheTextPlugin) {
  TempDir dir;
  EventWriter writer(dir.path.string(), "events.out.tfevents.text");
  const std::string text = "| lr | 0.1 |\n|---|---|\n| batch | 64 |";
  writer.add_text("config", text, 5);
  writer.flush();
  const Framing framing = read_records(read_file(writer.path()));
  ASSERT_EQ(framing.records.size(), 2u);
  const std::vector<Field> value = summary_value(framing.records[1]);
  EXPECT_EQ(only(value, 1).bytes, "config");
  const std::vector<Field> metadata = parse_message(only(value, 9).bytes);
  EXPECT_EQ(only(parse_message(only(metadata, 1).bytes), 1).bytes, "text");
  EXPECT_EQ(only(metadata, 4).varint, 2u);  // DATA_CLASS_TENSOR
  const std::vector<Field> tensor = parse_message(only(value, 8).bytes);
  EXPECT_EQ(only(tensor, 1).varint, 7u);  // DT_STRING
  EXPECT_EQ(only(tensor, 2).bytes, "");   // shape [] (a scalar)
  EXPECT_EQ(only(tensor, 8).bytes, text);
}

TEST(EventWriterTest, ATruncatedFileKeepsEveryCompleteRecord) {
  TempDir dir;
  std::string path;
  {
    EventWriter writer(dir.path.string(), "events.out.tfevents.full");
    path = writer.path();
    for (int step = 1; step <= 6; ++step) writer.add_scalar("loss", 1.0 / step, step);
    writer.add_histogram("weights", torch::arange(12.0), 6);
    writer.add_text("notes", "done", 6);
  }
  const std::string bytes = read_file(path);
  const Framing whole = read_records(bytes);
  ASSERT_EQ(whole.records.size(), 9u);
  ASSERT_EQ(whole.end, bytes.size());
  std::vector<size_t> boundaries = {0};
  for (const std::string& record : whole.records)
    boundaries.push_back(boundaries.back() + record.size() + 16);

  // A kill can leave any prefix of the file: each one reads back as the
  // records that end before the cut, unchanged, with no damage.
  for (size_t cut = 0; cut <= bytes.size(); ++cut) {
    const Framing framing = read_records(bytes.substr(0, cut));
    size_t complete = 0;
    while (complete + 1 < boundaries.size() && boundaries[complete + 1] <= cut) ++complete;
    ASSERT_FALSE(framing.damaged) << "cut at " << cut;
    ASSERT_EQ(framing.records.size(), complete) << "cut at " << cut;
    ASSERT_EQ(framing.end, boundaries[complete]) << "cut at " << cut;
    for (size_t i = 0; i < complete; ++i) ASSERT_EQ(framing.records[i], whole.records[i]);
  }

  REQUIRE_TOOL();
  // tfevents.py at a few cuts: at a record boundary the file is clean; inside
  // a record it prints the complete records, then reports the cut tail as an
  // error (exit 1).
  const fs::path copy = dir.path / "cut" / "events.out.tfevents.cut";
  fs::create_directories(copy.parent_path());
  struct Cut {
    size_t at;
    size_t scalars;  // complete loss records before the cut
    int status;
    const char* message;
  };
  const std::vector<Cut> cuts = {
      {boundaries[3], 2, 0, ""},
      {boundaries[3] + 5, 2, 1, "truncated record header"},
      {boundaries[4] + 20, 3, 1, "truncated record: length field says"},
      {bytes.size() - 1, 6, 1, "truncated record"},
  };
  for (const Cut& cut : cuts) {
    SCOPED_TRACE(cut.at);
    write_file(copy, bytes.substr(0, cut.at));
    const ToolResult result = run_tfevents("--tsv '" + copy.string() + "'");
    EXPECT_EQ(result.status, cut.status) << result.errors;
    EXPECT_THAT(result.errors, HasSubstr(cut.message));
    const std::vector<Row> rows = parse_tsv(result.output);
    ASSERT_GE(rows.size(), cut.scalars);
    for (size_t i = 0; i < cut.scalars; ++i) {
      EXPECT_EQ(rows[i].tag, "loss");
      EXPECT_EQ(rows[i].step, static_cast<int64_t>(i + 1));
      EXPECT_EQ(*rows[i].value, static_cast<double>(static_cast<float>(1.0 / (i + 1))));
    }
  }
}

TEST(EventWriterTest, TfeventsRejectsAFlippedByte) {
  REQUIRE_TOOL();
  TempDir dir;
  std::string path;
  {
    EventWriter writer(dir.path.string(), "events.out.tfevents.flip");
    path = writer.path();
    for (int step = 1; step <= 3; ++step) writer.add_scalar("loss", 1.0 / step, step);
  }
  const std::string bytes = read_file(path);
  const Framing whole = read_records(bytes);
  ASSERT_EQ(whole.records.size(), 4u);
  const size_t third = 16 * 2 + whole.records[0].size() + whole.records[1].size();
  struct Flip {
    size_t at;
    const char* message;
  };
  // In the third record (step 2): its length, its length's CRC, its data, its data's CRC.
  const std::vector<Flip> flips = {{third + 1, "CRC of the length field does not match"},
                                   {third + 9, "CRC of the length field does not match"},
                                   {third + 14, "CRC of the data does not match"},
                                   {third + 12 + whole.records[2].size(), "CRC of the data"}};
  const fs::path copy = dir.path / "flipped" / "events.out.tfevents.flipped";
  fs::create_directories(copy.parent_path());
  for (const Flip& flip : flips) {
    SCOPED_TRACE(flip.at);
    std::string damaged = bytes;
    damaged[flip.at] = static_cast<char>(damaged[flip.at] ^ 0x01);
    write_file(copy, damaged);
    const ToolResult result = run_tfevents("--strict --tsv '" + copy.string() + "'");
    EXPECT_EQ(result.status, 1) << result.errors;
    EXPECT_THAT(result.errors, HasSubstr(flip.message));
    // The records before the damage are still read.
    const std::vector<Row> rows = parse_tsv(result.output);
    ASSERT_EQ(rows.size(), 1u) << result.output;
    EXPECT_EQ(rows[0].step, 1);
  }
}

// The reader's own check on hand-made records: every flipped bit and every
// cut inside a record is caught, and cuts at record boundaries are clean.
TEST(EventWriterTest, TfeventsPassesItsSelftest) {
  REQUIRE_TOOL();
  const ToolResult result = run_tfevents("--selftest");
  EXPECT_EQ(result.status, 0) << result.errors;
  EXPECT_THAT(result.errors, HasSubstr("selftest: OK"));
}

TEST(EventWriterTest, ReportsADirectoryThatCannotBeMade) {
  TempDir dir;
  write_file(dir.path / "plain_file", "x");
  const std::string directory = (dir.path / "plain_file" / "run").string();
  EXPECT_THAT(
      [&] { EventWriter writer(directory); },
      ThrowsMessage<Error>(HasSubstr(directory + ": cannot create the event file directory")));
}

TEST(EventWriterTest, ReportsAFileThatCannotBeCreated) {
  TempDir dir;
  fs::create_directories(dir.path / "taken");
  EXPECT_THAT([&] { EventWriter writer(dir.path.string(), "taken"); },
              ThrowsMessage<Error>(
                  HasSubstr((dir.path / "taken").string() + ": cannot create the event file: ")));
}

TEST(EventWriterTest, ReportsAFullDisk) {
  ASSERT_TRUE(fs::exists("/dev/full")) << "/dev/full is missing: the test needs Linux's full device";
  EXPECT_THAT(
      [] {
        EventWriter writer("/dev", "full");
        writer.add_scalar("loss", 1.0, 1);
        writer.flush();
      },
      ThrowsMessage<Error>(HasSubstr("/dev/full: cannot write the event file: No space left")));
}

TEST(EventWriterTest, RefusesWritesAfterClose) {
  TempDir dir;
  EventWriter writer(dir.path.string());
  writer.add_scalar("loss", 1.0, 1);
  writer.close();
  EXPECT_FALSE(writer.is_open());
  writer.close();  // a second close does nothing
  EXPECT_THAT([&] { writer.add_scalar("loss", 1.0, 2); },
              ThrowsMessage<Error>(HasSubstr(writer.path() + ": the event file is closed")));
  EXPECT_EQ(read_records(read_file(writer.path())).records.size(), 2u);
}

}  // namespace
}  // namespace trainloop::tensorboard
