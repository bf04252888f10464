#include "../src/io/pickle_check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "../src/io/zip_check.h"
#include "support/test_support.h"

namespace trainloop::io {
namespace {

using testing::HasSubstr;

std::string bytes(const char* text, size_t size) { return std::string(text, size); }

TEST(PickleCheckTest, WellFormedPicklesPass) {
  EXPECT_EQ(pickle_fault(bytes("\x80\x02}q\x00.", 6)), "");  // {} memoized as 0
  // A list holding a 3-byte string, a float, and GET of memo 0.
  const std::string list = bytes("\x80\x02]q\x00(X\x03\x00\x00\x00", 11) + "abc" +
                           bytes("G?\xf0\x00\x00\x00\x00\x00\x00h\x00", 11) + "e.";
  EXPECT_EQ(pickle_fault(list), "");
  EXPECT_EQ(pickle_fault("(ctorch\n_utils\np0\n."), "");  // protocol 0: GLOBAL, PUT
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

// The weights file on which LibTorch 1.13's unpickler reserved 1.6 GB for a
// string (fuzz/weights_fuzzer): the archive check names its pickle.
TEST(PickleCheckTest, TheFuzzersHugeStringIsRejected) {
  const std::string input =
      testing_support::read_text(TRAINLOOP_SOURCE_DIR "/fuzz/findings/weights-huge-string");
  ASSERT_EQ(input.size(), 2911u);
  EXPECT_THAT(zip_archive_fault(input), HasSubstr("data.pkl: a string of"));
}

}  // namespace
}  // namespace trainloop::io
