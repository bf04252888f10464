#pragma once

// Integers stored least significant byte first (zip, pickle, TFRecord) or
// most significant byte first (IDX), assembled byte by byte, so the host's
// own byte order never matters. Private to the library.

#include <cstddef>
#include <cstdint>
#include <string>

namespace trainloop::io {

/// The unsigned integer in the `count` (at most 8) bytes at `bytes`, least
/// significant first.
inline uint64_t load_little_endian(const unsigned char* bytes, size_t count) {
  uint64_t value = 0;
  for (size_t i = 0; i < count; ++i) value |= uint64_t{bytes[i]} << (8 * i);
  return value;
}

/// The unsigned integer in the `count` (at most 8) bytes at `bytes`, most
/// significant first.
inline uint64_t load_big_endian(const unsigned char* bytes, size_t count) {
  uint64_t value = 0;
  for (size_t i = 0; i < count; ++i) value = (value << 8) | bytes[i];
  return value;
}

/// Appends the low `count` bytes of `value` to `out`, least significant first.
inline void append_little_endian(std::string& out, uint64_t value, size_t count) {
  for (size_t i = 0; i < count; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFFu);
}

}  // namespace trainloop::io
