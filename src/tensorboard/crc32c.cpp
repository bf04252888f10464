#include "crc32c.h"

#include <array>

namespace trainloop::tensorboard {

namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;

// Four tables for slicing-by-4: table k gives the CRC contribution of a byte
// that still has k more bytes to pass through, so four bytes are folded with
// four lookups instead of four dependent byte steps. Built at compile time.
struct Tables {
  std::array<std::array<uint32_t, 256>, 4> t{};
  constexpr Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1u) != 0 ? (c >> 1) ^ kPolynomial : c >> 1;
      t[0][i] = c;
    }
    for (size_t k = 1; k < 4; ++k) {
      for (size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
    }
  }
};

constexpr Tables kTables;

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const auto& t = kTables.t;
  crc = ~crc;
  // Bytes are combined explicitly (not read as a uint32_t), so the result is
  // the same on big-endian machines and unaligned input is fine.
  for (; size >= 4; size -= 4, bytes += 4) {
    crc ^= static_cast<uint32_t>(bytes[0]) | static_cast<uint32_t>(bytes[1]) << 8 |
           static_cast<uint32_t>(bytes[2]) << 16 | static_cast<uint32_t>(bytes[3]) << 24;
    crc =
        t[3][crc & 0xFFu] ^ t[2][(crc >> 8) & 0xFFu] ^ t[1][(crc >> 16) & 0xFFu] ^ t[0][crc >> 24];
  }
  for (; size > 0; --size, ++bytes) crc = t[0][(crc ^ *bytes) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace trainloop::tensorboard
