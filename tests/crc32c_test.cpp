#include "../src/tensorboard/crc32c.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace trainloop::tensorboard {
namespace {

// Bit by bit, straight from the definition, as an independent reference.
uint32_t bitwise_crc32c(const std::vector<unsigned char>& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (const unsigned char byte : data) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1u) != 0 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32cTest, MatchesPublishedCheckValues) {
  EXPECT_EQ(crc32c(""), 0u);
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  // RFC 3720, appendix B.4.
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string ascending;
  std::string descending;
  for (int i = 0; i < 32; ++i) {
    ascending += static_cast<char>(i);
    descending += static_cast<char>(31 - i);
  }
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(crc32c(descending), 0x113FDB5Cu);
}

TEST(Crc32cTest, EqualsTheBitwiseDefinitionForEveryLengthAndAlignment) {
  std::vector<unsigned char> data(300);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 7 + 3);
  for (size_t offset = 0; offset < 4; ++offset) {
    for (size_t length = 0; length + offset <= 100; ++length) {
      const std::vector<unsigned char> slice(data.begin() + offset, data.begin() + offset + length);
      ASSERT_EQ(crc32c(data.data() + offset, length), bitwise_crc32c(slice))
          << "offset " << offset << " length " << length;
    }
  }
}

TEST(Crc32cTest, ContinuesAcrossPieces) {
  const std::string text = "The quick brown fox jumps over the lazy dog";
  const uint32_t whole = crc32c(text);
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    EXPECT_EQ(crc32c(text.data() + cut, text.size() - cut, crc32c(text.data(), cut)), whole);
  }
}

TEST(Crc32cTest, MasksAsTfRecordDoes) {
  // The header of a record of 24 bytes (the file_version event), as
  // TensorFlow writes it: 18 00 00 00 00 00 00 00 a3 7f 4b 22.
  const std::string length("\x18\0\0\0\0\0\0\0", 8);
  EXPECT_EQ(mask_crc32c(crc32c(length)), 0x224B7FA3u);
  const uint32_t crc = crc32c("123456789");
  EXPECT_EQ(mask_crc32c(crc), static_cast<uint32_t>(((crc >> 15) | (crc << 17)) + 0xa282ead8u));
  for (uint32_t value : {0u, 1u, 0xE3069283u, 0xFFFFFFFFu, 0x5d7a3c11u}) {
    EXPECT_EQ(unmask_crc32c(mask_crc32c(value)), value);
  }
  static_assert(mask_crc32c(0) == 0xa282ead8u);
}

}  // namespace
}  // namespace trainloop::tensorboard
