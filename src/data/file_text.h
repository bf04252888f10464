#pragma once

#include <cstdint>
#include <string>

namespace trainloop::data::detail {

/// Reads a whole file into memory, through zlib when the name ends in ".gz".
/// Throws `Error` naming the path for a missing or unreadable file, a ".gz"
/// file that is not gzip, corrupt gzip data, or more than `max_bytes` bytes
/// (after decompression), checked as the data arrives, so a small file that
/// inflates to gigabytes stops at the limit.
std::string read_file_text(const std::string& path, int64_t max_bytes);

}  // namespace trainloop::data::detail
