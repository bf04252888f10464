#include "file_text.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "trainloop/error.h"

namespace trainloop::data::detail {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Error open_error(const std::string& path) {
  return Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
}

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};
struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};

// gzopen reads a file that is not gzip as plain data; a file named .gz that
// is not gzip is more likely a mistake, so say so.
void check_gzip_magic(const std::string& path) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw open_error(path);
  std::array<unsigned char, 2> magic{};
  const size_t got = std::fread(magic.data(), 1, magic.size(), file.get());
  if (got < magic.size() || magic[0] != 0x1f || magic[1] != 0x8b) {
    throw Error(fmt::format("{}: not a gzip file, expected the gzip magic 1f 8b", path));
  }
}

Error too_big(const std::string& path, int64_t max_bytes, bool compressed) {
  return Error(fmt::format("{}: more than {} bytes{}, expected at most that (the max_bytes limit)",
                           path, max_bytes, compressed ? " after decompression" : ""));
}

// Appends chunks from `read(buffer, size)` (which returns the byte count, 0
// at the end) until the end, failing past `max_bytes`.
template <class Read>
std::string read_chunks(const std::string& path, int64_t max_bytes, bool compressed, Read read) {
  std::string text;
  const auto limit = static_cast<uint64_t>(max_bytes);
  while (true) {
    const size_t old_size = text.size();
    // Read one byte past the limit, so a file of exactly max_bytes passes.
    const uint64_t room = limit + 1 - old_size;
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, room));
    text.resize(old_size + chunk);
    const size_t got = read(text.data() + old_size, chunk);
    text.resize(old_size + got);
    if (text.size() > limit) throw too_big(path, max_bytes, compressed);
    if (got == 0) return text;
  }
}

std::string read_plain(const std::string& path, int64_t max_bytes) {
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw open_error(path);
  return read_chunks(path, max_bytes, false, [&](char* buffer, size_t size) {
    const size_t got = std::fread(buffer, 1, size, file.get());
    if (got < size && std::ferror(file.get())) {
      throw Error(fmt::format("{}: read error: {}", path, std::strerror(errno)));
    }
    return got;
  });
}

std::string read_gzip(const std::string& path, int64_t max_bytes) {
  check_gzip_magic(path);
  std::unique_ptr<gzFile_s, GzCloser> file(gzopen(path.c_str(), "rb"));
  if (!file) throw open_error(path);
  return read_chunks(path, max_bytes, true, [&](char* buffer, size_t size) {
    const int got = gzread(file.get(), buffer, static_cast<unsigned>(size));
    int code = Z_OK;
    const char* message = gzerror(file.get(), &code);
    if (got < 0 || (code != Z_OK && code != Z_STREAM_END)) {
      std::string text = code == Z_ERRNO ? std::strerror(errno) : message;
      // zlib prefixes its message with the path, which ours already names.
      const std::string prefix = path + ": ";
      if (text.compare(0, prefix.size(), prefix) == 0) text.erase(0, prefix.size());
      throw Error(fmt::format("{}: gzip error: {}", path, text));
    }
    return static_cast<size_t>(got);
  });
}

}  // namespace

std::string read_file_text(const std::string& path, int64_t max_bytes) {
  if (max_bytes < 0) {
    throw Error(fmt::format("{}: max_bytes {}, expected 0 or more", path, max_bytes));
  }
  return ends_with(path, ".gz") ? read_gzip(path, max_bytes) : read_plain(path, max_bytes);
}

}  // namespace trainloop::data::detail
