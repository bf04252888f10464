#include "file_bytes.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include <unistd.h>

#include "../io/files.h"
#include "trainloop/error.h"

namespace trainloop::data::detail {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

std::string read_file_bytes(const std::string& path) {
  // A directory, a FIFO or a device is refused before any open that could block.
  const int fd = io::open_regular_file(path);
  std::unique_ptr<std::FILE, FileCloser> file(fdopen(fd, "rb"));
  if (file == nullptr) {
    const int error = errno;
    ::close(fd);
    throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(error)));
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
