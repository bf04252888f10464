#pragma once

// CRC-32C for the TFRecord framing of TensorBoard event files. Private to the
// library.

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace trainloop::tensorboard {

/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and
/// final xor 0xFFFFFFFF) of `size` bytes, continuing from `crc`, the CRC of
/// the bytes before them (0 for none), so data may be checked in pieces.
/// Example: `crc32c("123456789", 9) == 0xE3069283`.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

/// CRC-32C of a byte string.
inline uint32_t crc32c(std::string_view data) { return crc32c(data.data(), data.size()); }

/// The masked CRC that TFRecord files store:
/// `((crc >> 15) | (crc << 17)) + 0xa282ead8`, modulo 2^32.
constexpr uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

/// Inverse of `mask_crc32c`.
constexpr uint32_t unmask_crc32c(uint32_t masked) {
  const uint32_t rotated = masked - 0xa282ead8u;
  return (rotated >> 17) | (rotated << 15);
}

}  // namespace trainloop::tensorboard
