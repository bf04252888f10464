#include "../src/io/files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
