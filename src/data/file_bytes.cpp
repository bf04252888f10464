#include "file_bytes.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include "trainloop/error.h"

namespace trainloop::data::detail {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

std::string read_file_bytes(const std::string& path) {
  // fopen succeeds on a directory and only the first read fails (EISDIR);
  // saying so up front reads better.
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) {
    throw Error(fmt::format("{}: is a directory, expected a file", path));
  }
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) {
    throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  std::string bytes;
  for (;;) {
    const size_t old_size = bytes.size();
    bytes.resize(old_size + kChunkBytes);
    const size_t got = std::fread(bytes.data() + old_size, 1, kChunkBytes, file.get());
    bytes.resize(old_size + got);
    if (got < kChunkBytes) break;
  }
  if (std::ferror(file.get())) {
    throw Error(fmt::format("{}: read error after {} bytes: {}", path, bytes.size(),
                            std::strerror(errno)));
  }
  return bytes;
}

}  // namespace trainloop::data::detail
