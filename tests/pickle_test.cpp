#include "../src/io/pickle.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "../src/io/zip_check.h"
#include "support/test_support.h"
#include "trainloop/error.h"

namespace trainloop::io {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

std::string bytes(const char* text, size_t size) { return std::string(text, size); }

TEST(PickleCheckTest, WellFormedPicklesPass) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02}q\x00.", 6)), "");  // {} memoized as 0
  // A list holding a 3-byte string, a float, and GET of memo 0.
  const std::string list = bytes("\x80\x02]q\x00(X\x03\x00\x00\x00", 11) + "abc" +
                           bytes("G?\xf0\x00\x00\x00\x00\x00\x00h\x00", 11) + "e.";
  EXPECT_EQ(pickle_fault(list), "");
  EXPECT_EQ(pickle_fault("ctorch\n_utils\np0\n."), "");  // protocol 0: GLOBAL, PUT
  // {"a": (1, None)}: a dict filled by SETITEMS from a MARK, a TUPLE2.
  EXPECT_EQ(pickle_fault(bytes("\x80\x02}(X\x01\x00\x00\x00" "aK\x01N\x86u.", 16)), "");
}

TEST(PickleCheckTest, AStringLongerThanThePickle) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02X\xff\xff\xff\x7f" "abc.", 11)),
            "a string of 2147483647 bytes at byte 2, where 4 remain");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02\x8e\x00\x00\x00\x00\x01\x00\x00\x00.", 12)),
            "a string of 4294967296 bytes at byte 2, where 1 remain");
}

TEST(PickleCheckTest, AMemoIndexBeyondThePickle) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02}r\xff\xff\xff\x7f.", 9)),
            "memo index 2147483647 at byte 3 in a pickle of 9 bytes");
  EXPECT_EQ(pickle_fault("(g99999\n."), "memo index at byte 1 is not a number below 9");
  EXPECT_EQ(pickle_fault("(px\n."), "memo index at byte 1 is not a number below 5");
}

TEST(PickleCheckTest, CutShortUnknownOrUnended) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02}", 3)), "no STOP opcode");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02\xff.", 4)), "unknown opcode 0xff at byte 2");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02J\x01\x00", 5)), "opcode 0x4a at byte 2 is cut short");
  EXPECT_EQ(pickle_fault("ctorch\n_rebuild"), "opcode 0x63 at byte 0 has no end of line");
}

// LibTorch 1.13's unpickler pops these without looking (fuzz/weights_fuzzer:
// a bad free, and SEGVs).
TEST(PickleCheckTest, AStackThatRunsShort) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02}q\x00\x87.", 7)),
            "opcode 0x87 at byte 5 needs 3 values on the stack, found 1");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\nR.", 37)),
            "opcode 0x52 at byte 35 needs 2 values on the stack, found 1");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02\x85.", 4)),
            "opcode 0x85 at byte 2 needs 1 values on the stack, found 0");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02q\x00.", 5)),
            "opcode 0x71 at byte 2 needs 1 values on the stack, found 0");
  // Values below the MARK belong to whoever opened it.
  EXPECT_EQ(pickle_fault(bytes("\x80\x02NN(N\x86t.", 9)),
            "opcode 0x86 at byte 6 needs 2 values on the stack, found 1");
}

TEST(PickleCheckTest, MarksThatAreMissingOrLeftOpen) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02t.", 4)), "opcode 0x74 at byte 2 has no MARK before it");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02(Nd.", 6)),
            "opcode 0x64 at byte 4 pairs keys with values, but 1 remain");
  // SETITEMS needs its dict below the MARK.
  EXPECT_EQ(pickle_fault(bytes("\x80\x02(NNu.", 7)),
            "opcode 0x75 at byte 5 needs 1 values on the stack, found 0");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02(N.", 5)),
            "STOP at byte 4 leaves 1 values and 1 MARKs, expected 1 value");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02NN.", 5)),
            "STOP at byte 4 leaves 2 values and 0 MARKs, expected 1 value");
}

// ("storage", torch.<storage_class>, "0", "cpu", <count>) as a persistent
// id, then STOP; `count` is the opcodes that push the element count.
std::string storage_pickle(const std::string& storage_class, const std::string& count) {
  return bytes("\x80\x02(X\x07\x00\x00\x00storage", 15) + "ctorch\n" + storage_class + "\n" +
         bytes("X\x01\x00\x00\x00" "0X\x03\x00\x00\x00" "cpu", 14) + count + "tQ.";
}

TEST(PickleCheckTest, StoragesAreClaimedWithTheirBytes) {
  std::vector<StorageClaim> claims;
  const std::string six_floats = storage_pickle("FloatStorage", bytes("K\x06", 2));
  EXPECT_EQ(pickle_fault(six_floats, &claims), "");
  ASSERT_EQ(claims.size(), 1u);
  EXPECT_EQ(claims[0].key, "0");
  EXPECT_EQ(claims[0].bytes, 24u);
  EXPECT_EQ(claims[0].at, six_floats.size() - 2);
  // A LONG1 count, as Python writes counts above 2^31; doubles are 8 bytes.
  claims.clear();
  EXPECT_EQ(pickle_fault(storage_pickle("DoubleStorage",
                                        bytes("\x8a\x05\x00\x00\x00\x00\x01", 7)),
                         &claims),
            "");
  ASSERT_EQ(claims.size(), 1u);
  EXPECT_EQ(claims[0].bytes, uint64_t{8} << 32);
}

TEST(PickleCheckTest, PersistentIdsThatAreNoStorage) {
  const std::string negative = storage_pickle("FloatStorage", bytes("J\xff\xff\xff\xff", 5));
  EXPECT_EQ(pickle_fault(negative),
            fmt::format("storage \"0\" at byte {} claims -1 elements", negative.size() - 2));
  const std::string evil = storage_pickle("EvilStorage", bytes("K\x06", 2));
  EXPECT_EQ(pickle_fault(evil), fmt::format("persistent id at byte {} names torch.EvilStorage, "
                                            "not a torch storage class",
                                            evil.size() - 2));
  EXPECT_EQ(pickle_fault(bytes("\x80\x02NQ.", 5)),
            "persistent id at byte 3 is not (\"storage\", torch.<Type>Storage, key, location, "
            "element count)");
  EXPECT_EQ(pickle_fault(bytes("\x80\x02h\x00.", 5)),
            "opcode 0x68 at byte 2 reads memo 0, which nothing stored");
}

// One table names the storage classes both modes know, and their element
// types; their sizes are LibTorch's.
TEST(PickleCheckTest, StorageClassesAndTheirElementTypes) {
  EXPECT_EQ(storage_scalar_type("FloatStorage"), torch::kFloat);
  EXPECT_EQ(storage_scalar_type("QUInt2x4Storage"), torch::kQUInt2x4);
  EXPECT_EQ(storage_scalar_type("EvilStorage"), std::nullopt);
  EXPECT_EQ(storage_scalar_type("torch.FloatStorage"), std::nullopt);  // the name in module torch
  for (const torch::ScalarType type :
       {torch::kBool, torch::kUInt8, torch::kInt8, torch::kInt16, torch::kInt32, torch::kInt64,
        torch::kHalf, torch::kBFloat16, torch::kFloat, torch::kDouble, torch::kComplexHalf,
        torch::kComplexFloat, torch::kComplexDouble, torch::kQInt8, torch::kQUInt8,
        torch::kQInt32, torch::kQUInt4x2, torch::kQUInt2x4}) {
    const char* name = storage_class_name(type);
    ASSERT_NE(name, nullptr) << c10::toString(type);
    EXPECT_EQ(storage_scalar_type(name), type) << name;
  }
  // A QUInt4x2 storage's element is a byte holding two 4-bit values (c10::elementSize).
  std::vector<StorageClaim> claims;
  EXPECT_EQ(pickle_fault(storage_pickle("QUInt4x2Storage", bytes("K\x06", 2)), &claims), "");
  ASSERT_EQ(claims.size(), 1u);
  EXPECT_EQ(claims[0].bytes, 6u);
}

// Read mode makes every check of validate mode itself, after the pickle's name.
TEST(PickleCheckTest, ReadModeChecksAsValidateModeDoes) {
  const std::map<std::string, ZipEntry> records;
  const std::string short_stack = bytes("\x80\x02}q\x00\x87.", 7);
  EXPECT_THAT([&] { read_state_dict_pickle({"archive/data.pkl", short_stack, true}, records); },
              ThrowsMessage<Error>("archive/data.pkl: opcode 0x87 at byte 5 needs 3 values on "
                                   "the stack, found 1"));
  const std::string no_storage = storage_pickle("EvilStorage", bytes("K\x06", 2));
  EXPECT_THAT([&] { read_state_dict_pickle({"archive/data.pkl", no_storage, true}, records); },
              ThrowsMessage<Error>(HasSubstr("names torch.EvilStorage, not a torch storage class")));
  const std::string empty_dict = bytes("\x80\x02}.", 4);
  EXPECT_TRUE(read_state_dict_pickle({"archive/data.pkl", empty_dict, true}, records).empty());
}

// The weights file on which LibTorch 1.13's unpickler reserved 1.6 GB for a
// string (fuzz/weights_fuzzer): the archive check names its pickle.
TEST(PickleCheckTest, TheFuzzersHugeStringIsRejected) {
  const std::string input =
      testing_support::read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-huge-string");
  ASSERT_EQ(input.size(), 2911u);
  EXPECT_THAT(zip_archive_fault(input), HasSubstr("data.pkl: a string of"));
}

// A local run's finding (a TUPLE3 on one value: a SEGV), and the bad free a
// CI run reported, remade by hand: a REDUCE that finds only its function.
TEST(PickleCheckTest, TheFuzzersShortStacksAreRejected) {
  const std::string tuple3 =
      testing_support::read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-short-stack");
  EXPECT_THAT(zip_archive_fault(tuple3),
              HasSubstr("data.pkl: opcode 0x87 at byte 5 needs 3 values on the stack, found 1"));
  const std::string reduce =
      testing_support::read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-bad-free");
  EXPECT_THAT(zip_archive_fault(reduce),
              HasSubstr("data.pkl: opcode 0x52 at byte 35 needs 2 values on the stack"));
}

}  // namespace
}  // namespace trainloop::io
