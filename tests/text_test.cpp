#include "trainloop/data/text.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/data/epochs.h"
#include "trainloop/error.h"

namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::decode;
using trainloop::data::read_text;
namespace testing_support = trainloop::testing_support;
using trainloop::data::text_dataset;
using trainloop::data::text_windows;
using trainloop::data::TextOptions;
using trainloop::data::Vocabulary;

class TextTest : public testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           (std::string("trainloop_text_test_") + info->name() + "_" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  fs::path dir_;
};

// The rows of a [N, T] id tensor as strings.
std::vector<std::string> rows(const torch::Tensor& ids) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < ids.size(0); ++i) out.push_back(decode(ids[i]));
  return out;
}

TEST_F(TextTest, WindowsWithTargetsShiftedByOne) {
  const auto data = text_windows("abcdefghij", TextOptions(3), "memory");
  EXPECT_EQ(data.inputs.scalar_type(), torch::kLong);
  EXPECT_EQ(data.targets.scalar_type(), torch::kLong);
  EXPECT_EQ(data.inputs.sizes(), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(rows(data.inputs), (std::vector<std::string>{"abc", "def", "ghi"}));
  EXPECT_EQ(rows(data.targets), (std::vector<std::string>{"bcd", "efg", "hij"}));
  // The default vocabulary: id = byte value.
  EXPECT_EQ(data.inputs[0][0].item<int64_t>(), 'a');
}

TEST_F(TextTest, Stride) {
  const auto overlapping = text_windows("abcdefg", TextOptions(3).stride(1), "memory");
  EXPECT_EQ(rows(overlapping.inputs),
            (std::vector<std::string>{"abc", "bcd", "cde", "def"}));
  EXPECT_EQ(rows(overlapping.targets),
            (std::vector<std::string>{"bcd", "cde", "def", "efg"}));
  // A tail shorter than a stride is left out: "hi" after "ef|g".
  const auto spaced = text_windows("abcdefghi", TextOptions(2).stride(3), "memory");
  EXPECT_EQ(rows(spaced.inputs), (std::vector<std::string>{"ab", "de", "gh"}));
  EXPECT_EQ(rows(spaced.targets), (std::vector<std::string>{"bc", "ef", "hi"}));
  const auto exact = text_windows("abcd", TextOptions(3), "memory");
  EXPECT_EQ(rows(exact.inputs), (std::vector<std::string>{"abc"}));
}

TEST_F(TextTest, WindowsShareOneBufferOfIds) {
  const std::string text(1000, 'x');
  const auto data = text_windows(text, TextOptions(100).stride(1), "memory");
  EXPECT_EQ(data.inputs.size(0), 900);
  // 8 bytes per byte of text, not 100 times that.
  EXPECT_EQ(data.inputs.storage().nbytes(), 8 * text.size());
  EXPECT_TRUE(data.inputs.storage().is_alias_of(data.targets.storage()));
}

TEST_F(TextTest, EpochsCutBatchesOfWindows) {
  std::string text;
  for (int i = 0; i < 500; ++i) text.push_back(static_cast<char>('a' + (i * 7) % 26));
  const auto data = text_windows(text, TextOptions(16).stride(5), "memory");
  trainloop::data::Epochs epochs(data, 8);
  epochs.start_epoch(3);
  for (int64_t b = 0; b < epochs.batch_count(); ++b) {
    const auto batch = epochs.batch(b);
    ASSERT_EQ(batch.inputs.size(1), 16);
    ASSERT_TRUE(batch.inputs.is_contiguous());
    EXPECT_TRUE(torch::equal(batch.targets.narrow(1, 0, 15), batch.inputs.narrow(1, 1, 15)));
    for (int64_t r = 0; r < batch.inputs.size(0); ++r) {
      // Each row is a substring of the text starting at a multiple of the stride.
      const std::string row = decode(batch.inputs[r]);
      const size_t at = text.find(row);
      ASSERT_NE(at, std::string::npos);
      EXPECT_EQ(decode(batch.targets[r]), text.substr(at + 1, 16));
    }
  }
}

TEST_F(TextTest, DecodeRoundTripsAnyBytes) {
  std::string text = "caf\xc3\xa9 \xe2\x82\xac\n";  // UTF-8: one token per byte
  text.push_back('\0');
  text.push_back('\xff');
  EXPECT_EQ(decode(Vocabulary().encode(text)), text);
  EXPECT_EQ(decode(torch::tensor({104, 105}, torch::kInt32)), "hi");
  EXPECT_EQ(decode(torch::tensor({{104, 105}, {33, 10}})), "hi!\n");
}

TEST_F(TextTest, DecodeRejectsBadIds) {
  EXPECT_THAT([] { decode(torch::tensor({104, 256, 3})); },
              ThrowsMessage<Error>(HasSubstr("decode: id 256 at position 1, expected 0 to 255")));
  EXPECT_THAT([] { decode(torch::tensor({-1})); },
              ThrowsMessage<Error>(HasSubstr("id -1 at position 0")));
  EXPECT_THAT([] { decode(torch::tensor({1.5f})); },
              ThrowsMessage<Error>(HasSubstr("expected integer token ids")));
}

TEST_F(TextTest, CompactVocabulary) {
  const Vocabulary vocabulary = Vocabulary::of("banana!");
  EXPECT_EQ(vocabulary.size(), 4);
  EXPECT_EQ(vocabulary.bytes(), "!abn");
  EXPECT_TRUE(vocabulary.contains('n'));
  EXPECT_FALSE(vocabulary.contains('c'));
  EXPECT_TRUE(torch::equal(vocabulary.encode("nab!"), torch::tensor({3, 1, 2, 0}, torch::kLong)));
  EXPECT_EQ(vocabulary.decode(torch::tensor({2, 1, 3})), "ban");
  EXPECT_THAT([&] { vocabulary.decode(torch::tensor({4})); },
              ThrowsMessage<Error>(HasSubstr("id 4 at position 0, expected 0 to 3")));
  EXPECT_THAT([&] { vocabulary.encode("bad", "notes.txt"); },
              ThrowsMessage<Error>(HasSubstr(
                  "notes.txt: byte 0x64 at offset 2 is not in the vocabulary of 4 bytes")));
  EXPECT_THAT([] { Vocabulary::of(""); }, ThrowsMessage<Error>(HasSubstr("empty text")));
}

TEST_F(TextTest, DatasetFromFiles) {
  const std::string a = write("a.txt", "hello ");
  const std::string b = write("b.txt", "world");
  const auto data = text_dataset({a, b}, TextOptions(4).stride(2));
  EXPECT_EQ(data.vocabulary.size(), 256);
  // Concatenated in order; windows may span the two files.
  EXPECT_EQ(rows(data.dataset.inputs),
            (std::vector<std::string>{"hell", "llo ", "o wo", "worl"}));
  EXPECT_EQ(rows(data.dataset.targets),
            (std::vector<std::string>{"ello", "lo w", " wor", "orld"}));
  const auto compact = text_dataset({a, b}, TextOptions(4).compact_vocabulary(true));
  EXPECT_EQ(compact.vocabulary.bytes(), " dehlorw");
  EXPECT_EQ(compact.vocabulary.decode(compact.dataset.inputs[1]), "o wo");
  EXPECT_EQ(compact.dataset.inputs.max().item<int64_t>(), 7);
}

TEST_F(TextTest, MissingFile) {
  const std::string a = write("a.txt", "some text here");
  const std::string missing = (dir_ / "missing.txt").string();
  EXPECT_THAT([&] { text_dataset({a, missing}, TextOptions(4)); },
              ThrowsMessage<Error>(HasSubstr(missing + ": cannot open: No such file or directory")));
  EXPECT_THAT([&] { text_dataset({}, TextOptions(4)); },
              ThrowsMessage<Error>(HasSubstr("no files given")));
}

TEST_F(TextTest, RefusesAFifo) {
  const fs::path fifo = dir_ / "fifo.txt";
  testing_support::make_fifo(fifo);
  EXPECT_EQ(testing_support::error_reading_fifo(fifo, [&] { read_text({fifo.string()}); }),
            fifo.string() + ": not a regular file (a FIFO)");
}

TEST_F(TextTest, TextShorterThanAWindowAndItsTarget) {
  const std::string path = write("short.txt", "abcd");
  EXPECT_THAT([&] { text_dataset({path}, TextOptions(4)); },
              ThrowsMessage<Error>(HasSubstr(path + ": 4 bytes, expected at least 4 + 1")));
  const std::string empty = write("empty.txt", "");
  EXPECT_THAT([&] { text_dataset({empty}, TextOptions(4).compact_vocabulary(true)); },
              ThrowsMessage<Error>(HasSubstr(empty + ": empty file, expected text")));
  EXPECT_THAT([&] { read_text({write("a.txt", "some text"), empty}); },
              ThrowsMessage<Error>(HasSubstr(empty + ": empty file, expected text")));
  // Several files are named together: the windows run across them.
  std::vector<std::string> many;
  for (int i = 0; i < 5; ++i) many.push_back(write("f" + std::to_string(i), "x"));
  EXPECT_THAT([&] { text_dataset(many, TextOptions(8)); },
              ThrowsMessage<Error>(HasSubstr(many[0] + " + " + many[1] + " + " + many[2] +
                                             " + 2 more files: 5 bytes")));
  EXPECT_THAT([&] { text_windows("abc", TextOptions(std::numeric_limits<int64_t>::max()), "m"); },
              ThrowsMessage<Error>(HasSubstr("m: 3 bytes, expected at least")));
}

TEST_F(TextTest, BadWindowOrStride) {
  const std::string path = write("a.txt", "plenty of text for a window");
  EXPECT_THAT([&] { text_dataset({path}, TextOptions(0)); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": window 0, expected a positive number of tokens")));
  EXPECT_THAT([&] { text_dataset({path}, TextOptions(-3)); },
              ThrowsMessage<Error>(HasSubstr("window -3")));
  EXPECT_THAT([&] { text_dataset({path}, TextOptions(4).stride(0)); },
              ThrowsMessage<Error>(HasSubstr(
                  path + ": stride 0, expected a positive number of tokens")));
}

TEST_F(TextTest, ByteOutsideTheVocabulary) {
  EXPECT_THAT([] { text_windows("abcabd", TextOptions(2), "chat.log", Vocabulary::of("abc")); },
              ThrowsMessage<Error>(HasSubstr("chat.log: byte 0x64 at offset 5")));
}

}  // namespace
