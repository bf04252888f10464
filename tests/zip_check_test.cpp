#include "../src/io/zip_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <sstream>
#include <string>

#include "support/test_support.h"

namespace trainloop::io {
namespace {

using testing::HasSubstr;
using testing_support::read_text;

std::string pickled_state_dict() {
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("fc.weight", torch::randn({4, 3}));
  dict.insert("fc.bias", torch::randn({4}));
  const std::vector<char> bytes = torch::pickle_save(dict);
  return std::string(bytes.begin(), bytes.end());
}

std::string serialized_archive() {
  torch::serialize::OutputArchive archive;
  archive.write("step", torch::tensor(7));
  archive.write("weights", torch::randn({16, 16}));
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

uint32_t read32(const std::string& bytes, size_t at) {
  uint32_t value = 0;
  for (size_t i = 0; i < 4; ++i) value |= uint32_t{static_cast<unsigned char>(bytes[at + i])} << (8 * i);
  return value;
}

void write16(std::string& bytes, size_t at, uint16_t value) {
  bytes[at] = static_cast<char>(value & 0xff);
  bytes[at + 1] = static_cast<char>(value >> 8);
}

void write32(std::string& bytes, size_t at, uint32_t value) {
  for (size_t i = 0; i < 4; ++i) bytes[at + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

size_t end_record(const std::string& bytes) { return bytes.rfind(std::string("PK\x05\x06", 4)); }
// torch writes a zip64 end record too; its fields are where a reader looks.
size_t zip64_end_record(const std::string& bytes) {
  return bytes.rfind(std::string("PK\x06\x06", 4));
}

void write64(std::string& bytes, size_t at, uint64_t value) {
  for (size_t i = 0; i < 8; ++i) bytes[at + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}
size_t first_central_header(const std::string& bytes) {
  return bytes.find(std::string("PK\x01\x02", 4));
}

TEST(ZipCheckTest, ArchivesTorchWritesPass) {
  EXPECT_EQ(zip_archive_fault(pickled_state_dict()), "");
  EXPECT_EQ(zip_archive_fault(serialized_archive()), "");
  // Written by Python's torch.save (the weights fuzzer's seed).
  const std::string python =
      read_text(TRAINLOOP_SOURCE_DIR "/fuzz/corpus/weights/python_state_dict.pt");
  ASSERT_FALSE(python.empty());
  EXPECT_EQ(zip_archive_fault(python), "");
}

// torch.save before PyTorch 1.6 (or with _use_new_zipfile_serialization=False)
// starts with its magic number pickled: named, with the way out. The bytes
// are those torch 1.13 writes (tests/python/write_state_dicts.py makes such
// a file for state_dict_test).
TEST(ZipCheckTest, NamesPyTorchsLegacyFormat) {
  const std::string legacy("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
                           "\x2e\x80\x02\x4d\xe9\x03.",
                           21);
  const std::string expected =
      "PyTorch's legacy format (torch.save before PyTorch 1.6, or "
      "_use_new_zipfile_serialization=False), not a zip archive: load it in Python and save it "
      "again with torch.save's default format";
  EXPECT_EQ(zip_archive_fault(legacy), expected);
  std::string tar(1024, '\0');
  tar.replace(257, 5, "ustar");
  EXPECT_EQ(zip_archive_fault(tar), expected);
  // The magic number pickled with another protocol is no torch file.
  std::string other = legacy;
  other[1] = '\x04';
  EXPECT_EQ(zip_archive_fault(other), "no end-of-central-directory record");
}

TEST(ZipCheckTest, NoEndRecord) {
  EXPECT_EQ(zip_archive_fault(""), "no end-of-central-directory record");
  EXPECT_EQ(zip_archive_fault("not a zip archive at all, just text"),
            "no end-of-central-directory record");
  std::string cut = pickled_state_dict();
  cut.pop_back();  // the end record no longer ends the file
  EXPECT_EQ(zip_archive_fault(cut), "no end-of-central-directory record");
}

TEST(ZipCheckTest, DirectoryOutsideTheFile) {
  std::string bytes = pickled_state_dict();
  write32(bytes, end_record(bytes) + 16, 0xffffffff);
  const size_t zip64 = zip64_end_record(bytes);
  ASSERT_NE(zip64, std::string::npos);
  write64(bytes, zip64 + 48, bytes.size());
  EXPECT_THAT(zip_archive_fault(bytes), HasSubstr("the central directory (bytes"));
}

TEST(ZipCheckTest, EndRecordsThatDisagree) {
  std::string bytes = pickled_state_dict();
  const size_t zip64 = zip64_end_record(bytes);
  ASSERT_NE(zip64, std::string::npos);
  write64(bytes, zip64 + 48, 12);
  EXPECT_THAT(zip_archive_fault(bytes),
              HasSubstr("the directory offset is 12 in the zip64 end record but"));
}

TEST(ZipCheckTest, MoreEntriesThanTheDirectoryHolds) {
  std::string bytes = pickled_state_dict();
  const size_t end = end_record(bytes);
  write16(bytes, end + 8, 200);
  write16(bytes, end + 10, 200);
  const size_t zip64 = zip64_end_record(bytes);
  ASSERT_NE(zip64, std::string::npos);
  write64(bytes, zip64 + 24, 200);
  write64(bytes, zip64 + 32, 200);
  EXPECT_THAT(zip_archive_fault(bytes), HasSubstr("of 200 is not where the directory says"));
}

TEST(ZipCheckTest, UnknownCompressionAndImpossibleDeflate) {
  std::string bytes = pickled_state_dict();
  const size_t header = first_central_header(bytes);
  write16(bytes, header + 10, 12);  // bzip2
  EXPECT_EQ(zip_archive_fault(bytes), "central directory entry 1 uses compression method 12; "
                                      "torch writes 0 (stored) or 8 (deflate)");
  write16(bytes, header + 10, 8);
  write32(bytes, header + 20, 10);
  write32(bytes, header + 24, 1 << 30);
  EXPECT_EQ(zip_archive_fault(bytes), "central directory entry 1 says its 10 deflated bytes hold "
                                      "1073741824, more than deflate can");
}

TEST(ZipCheckTest, EntryDataPastTheEntries) {
  std::string bytes = pickled_state_dict();
  const size_t header = first_central_header(bytes);
  write32(bytes, header + 20, 0x7ff00000);  // both sizes: a 2 GB entry in a small file
  write32(bytes, header + 24, 0x7ff00000);
  EXPECT_THAT(zip_archive_fault(bytes), HasSubstr("bytes of data from byte"));
  EXPECT_THAT(zip_archive_fault(bytes), HasSubstr("run past the entries"));
}

TEST(ZipCheckTest, LocalHeaderMissing) {
  std::string bytes = pickled_state_dict();
  const size_t header = first_central_header(bytes);
  write32(bytes, header + 42, read32(bytes, header + 42) + 1);
  EXPECT_THAT(zip_archive_fault(bytes), HasSubstr("central directory entry 1: no local header at byte"));
}

TEST(ZipCheckTest, SizesClaimingZip64WithoutItsFields) {
  std::string bytes = pickled_state_dict();
  const size_t header = first_central_header(bytes);
  write32(bytes, header + 24, 0xffffffff);
  EXPECT_THAT(zip_archive_fault(bytes), HasSubstr("zip64 sizes without a zip64 extra field"));
}

// The input on which LibTorch 1.13's zip reader read out of bounds (SEGV
// under ASan in mz_zip_reader_init), found by fuzz/weights_fuzzer.
TEST(ZipCheckTest, TheFuzzersCrashingInputIsRejected) {
  const std::string crash = read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-segv");
  ASSERT_FALSE(crash.empty());
  EXPECT_NE(zip_archive_fault(crash), "");
}

TEST(ZipCheckTest, AStorageWithoutItsRecordIsRejected) {
  std::string bytes = pickled_state_dict();
  // Renamed in the central directory, where readers look records up.
  const size_t name = bytes.find("archive/data/1", first_central_header(bytes));
  ASSERT_NE(name, std::string::npos);
  bytes[name + 13] = '7';
  EXPECT_THAT(zip_archive_fault(bytes),
              testing::MatchesRegex("archive/data.pkl: storage \"1\" \\(byte [0-9]+\\) is not in "
                                    "the archive; expected archive/data/1"));
}

// LibTorch's zip reader finds "data.pkl" whatever the case of its name: a
// fuzzer input that named it "data.pkL" got its 1.6 GB string past the check.
TEST(ZipCheckTest, NamesAreMatchedWhateverTheirCase) {
  const std::string input =
      read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-pickle-name-case");
  EXPECT_THAT(zip_archive_fault(input), HasSubstr("archive/data.pkL: a string of 1665400849 bytes"));
  std::string bytes = pickled_state_dict();
  const size_t name = bytes.find("archive/data/1", first_central_header(bytes));
  ASSERT_NE(name, std::string::npos);
  bytes[name + 13] = '0';  // now "archive/data/0" twice
  EXPECT_THAT(zip_archive_fault(bytes),
              HasSubstr("has the name of an earlier entry (archive/data/0, ignoring case)"));
  bytes = pickled_state_dict();
  bytes.replace(bytes.find("archive/data/1", first_central_header(bytes)), 14, "ARCHIVE/DATA/1");
  EXPECT_EQ(zip_archive_fault(bytes), "");
}

// A fuzzer input whose pickle sizes the bias's storage at 5 floats while
// its record holds none: LibTorch read through a null pointer (SEGV).
TEST(ZipCheckTest, AStorageLargerThanItsRecordIsRejected) {
  const std::string input = read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-short-record");
  EXPECT_EQ(zip_archive_fault(input),
            "python_state_dict/data.pkl: storage \"1\" (byte 204) needs 20 bytes, "
            "python_state_dict/data/1 holds 0");
}

}  // namespace
}  // namespace trainloop::io
