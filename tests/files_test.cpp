#include "../src/io/files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/error.h"

namespace trainloop::io {
namespace {

namespace fs = std::filesystem;
using testing::ElementsAre;
using testing::HasSubstr;
using testing::ThrowsMessage;
using testing_support::read_text;
using testing_support::TempDir;

// `bytes` gzip-compressed, as zlib writes a .gz file.
std::string gzip(const fs::path& path, const std::string& bytes) {
  gzFile out = gzopen(path.c_str(), "wb");
  EXPECT_NE(out, nullptr);
  EXPECT_EQ(gzwrite(out, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  EXPECT_EQ(gzclose(out), Z_OK);
  return read_text(path);
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::vector<std::string> names_in(const fs::path& directory) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

TEST(FilesTest, AtomicWriteReplacesTheFileAndLeavesNoTemporary) {
  TempDir scratch;
  const fs::path path = scratch.path / "plot.svg";
  write_atomically(path.string(), "first");
  write_atomically(path.string(), "second", /*durable=*/true);
  EXPECT_EQ(read_text(path), "second");
  EXPECT_THAT(names_in(scratch.path), ElementsAre("plot.svg"));
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::others_read, fs::perms::others_read);
}

TEST(FilesTest, AtomicWriteNamesThePathOnFailure) {
  TempDir scratch;
  const std::string path = (scratch.path / "missing" / "plot.svg").string();
  EXPECT_THAT([&] { write_atomically(path, "x"); },
              ThrowsMessage<Error>(HasSubstr(path + ": cannot create a temporary file")));
}

TEST(FilesTest, ReadFileReadsWholeFilesAndRefusesOthers) {
  TempDir scratch;
  const fs::path path = scratch.path / "data";
  std::ofstream(path, std::ios::binary) << std::string("a\0b", 3);
  EXPECT_EQ(read_file(path.string(), 3), std::string("a\0b", 3));
  EXPECT_THAT([&] { read_file(path.string(), 2); },
              ThrowsMessage<Error>(HasSubstr(path.string() + ": 3 bytes, expected at most 2")));
  EXPECT_THAT([&] { read_file(scratch.path.string(), 10); },
              ThrowsMessage<Error>(HasSubstr(": not a regular file")));
  EXPECT_THAT([&] { read_file((scratch.path / "nothing").string(), 10); },
              ThrowsMessage<Error>(HasSubstr("nothing: cannot open: No such file or directory")));
}

// A FIFO where a checkpoint file is expected: opening it would wait for a
// writer forever, so what it is gets checked first.
TEST(FilesTest, ReadFileRefusesAFifoAndDevicesWithoutBlocking) {
  TempDir scratch;
  const fs::path fifo = scratch.path / "manifest.json";
  testing_support::make_fifo(fifo);
  EXPECT_EQ(testing_support::error_reading_fifo(fifo, [&] { read_file(fifo.string(), 100); }),
            fifo.string() + ": not a regular file (a FIFO)");
  EXPECT_THAT([&] { read_file("/dev/null", 10); },
              ThrowsMessage<Error>(HasSubstr("/dev/null: not a regular file (a character device)")));
  EXPECT_THAT([&] { read_file(scratch.path.string(), 10); },
              ThrowsMessage<Error>(HasSubstr(": not a regular file (a directory)")));
}

TEST(FilesTest, ReadFileInflatesGzipOnlyWhenAsked) {
  TempDir scratch;
  const fs::path path = scratch.path / "table.csv.gz";
  const std::string text = "a,b\n1,2\n";
  const std::string compressed = gzip(path, text);
  ReadOptions options;
  options.gunzip = true;
  EXPECT_EQ(read_file(path.string(), options), text);
  // Without gunzip a .gz file is bytes like any other.
  EXPECT_EQ(read_file(path.string()), compressed);
  options.max_bytes = text.size();
  EXPECT_EQ(read_file(path.string(), options), text);
}

TEST(FilesTest, ReadFileNamesTheLimitItStopsAt) {
  TempDir scratch;
  const fs::path plain = scratch.path / "t.csv";
  write_bytes(plain, "a\n1\n");
  ReadOptions options;
  options.max_bytes = 3;
  options.limit_name = "the max_bytes limit";
  EXPECT_THAT([&] { read_file(plain.string(), options); },
              ThrowsMessage<Error>(HasSubstr(
                  plain.string() + ": 4 bytes, expected at most 3 (the max_bytes limit)")));
  const fs::path bomb = scratch.path / "bomb.gz";
  gzip(bomb, std::string(100000, ','));
  options.gunzip = true;
  options.max_bytes = 1000;
  EXPECT_THAT([&] { read_file(bomb.string(), options); },
              ThrowsMessage<Error>(HasSubstr(
                  bomb.string() + ": more than 1000 bytes after decompression, expected at most "
                                  "that (the max_bytes limit)")));
}

TEST(FilesTest, ReadFileRefusesBadGzip) {
  TempDir scratch;
  ReadOptions options;
  options.gunzip = true;
  const fs::path plain = scratch.path / "plain.gz";
  write_bytes(plain, "a\n1\n");
  EXPECT_THAT([&] { read_file(plain.string(), options); },
              ThrowsMessage<Error>(HasSubstr(
                  plain.string() + ": not a gzip file (starts with 61 0a, expected 1f 8b)")));
  const fs::path tiny = scratch.path / "tiny.gz";
  write_bytes(tiny, "\x1f");
  EXPECT_THAT([&] { read_file(tiny.string(), options); },
              ThrowsMessage<Error>(HasSubstr(
                  tiny.string() + ": not a gzip file (1 bytes long, expected the gzip magic 1f 8b)")));
  // Cut inside its checksum: every byte of the data is there, the check is not.
  const fs::path cut = scratch.path / "cut.gz";
  const std::string whole = gzip(cut, std::string(5000, 'x'));
  write_bytes(cut, whole.substr(0, whole.size() - 2));
  EXPECT_THAT([&] { read_file(cut.string(), options); },
              ThrowsMessage<Error>(HasSubstr(cut.string() + ": gzip error: unexpected end of file")));
}

// The streaming side: what a reader that knows its format's length uses.
TEST(FilesTest, InputFileReadsInPiecesAndReportsACutStreamOnlyWhenAsked) {
  TempDir scratch;
  const fs::path path = scratch.path / "data.gz";
  std::string data;
  for (int i = 0; i < 3000; ++i) data += std::to_string(i * 7919 % 1000);
  const std::string whole = gzip(path, data);
  InputFile file(path.string(), /*gunzip=*/true);
  EXPECT_TRUE(file.compressed());
  EXPECT_EQ(file.size_on_disk(), whole.size());
  std::string first(10, '\0');
  ASSERT_EQ(file.read(first.data(), first.size()), 10u);
  EXPECT_EQ(first, data.substr(0, 10));
  file.rewind();
  std::string all(data.size() + 5, '\0');
  ASSERT_EQ(file.read(all.data(), all.size()), data.size());
  EXPECT_EQ(all.substr(0, data.size()), data);
  EXPECT_NO_THROW(file.check_complete());

  write_bytes(path, whole.substr(0, whole.size() / 2));
  InputFile cut(path.string(), /*gunzip=*/true);
  const size_t got = cut.read(all.data(), all.size());
  EXPECT_GT(got, 0u);
  EXPECT_LT(got, data.size());
  EXPECT_EQ(all.substr(0, got), data.substr(0, got));
  EXPECT_THAT([&] { cut.check_complete(); },
              ThrowsMessage<Error>(HasSubstr(path.string() + ": gzip error: unexpected end of file")));

  const fs::path fifo = scratch.path / "fifo.gz";
  testing_support::make_fifo(fifo);
  EXPECT_EQ(testing_support::error_reading_fifo(fifo, [&] { InputFile open(fifo.string(), true); }),
            fifo.string() + ": not a regular file (a FIFO)");
}

TEST(FilesTest, SyncPathSyncsFilesAndDirectoriesAndNamesMissingOnes) {
  TempDir scratch;
  write_atomically((scratch.path / "f").string(), "x");
  EXPECT_NO_THROW(sync_path((scratch.path / "f").string()));
  EXPECT_NO_THROW(sync_path(scratch.path.string()));
  EXPECT_THAT([&] { sync_path((scratch.path / "gone").string()); },
              ThrowsMessage<Error>(HasSubstr("gone: cannot open to sync")));
}

}  // namespace
}  // namespace trainloop::io
