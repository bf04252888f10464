#include "file_text.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../io/files.h"
#include "trainloop/error.h"

namespace trainloop::data::detail {
namespace {

constexpr size_t kChunkBytes = size_t{1} << 20;

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Closes a descriptor unless released (gzdopen takes it over).
class Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {}
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  ~Descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

Error too_big(const std::string& path, int64_t max_bytes, bool compressed) {
  return Error(fmt::format("{}: more than {} bytes{}, expected at most that (the max_bytes limit)",
                           path, max_bytes, compressed ? " after decompression" : ""));
}

// gzopen reads a file that is not gzip as plain data; a file named .gz that
// is not gzip is more likely a mistake, so say so.
void check_gzip_magic(const std::string& path, int fd) {
  std::array<unsigned char, 2> magic{};
  const ssize_t got = ::pread(fd, magic.data(), magic.size(), 0);
  if (got < static_cast<ssize_t>(magic.size()) || magic[0] != 0x1f || magic[1] != 0x8b) {
    throw Error(fmt::format("{}: not a gzip file, expected the gzip magic 1f 8b", path));
  }
}

// A gzip stream over a copy of `fd`, read from the start of the file.
GzFile open_gzip(const std::string& path, int fd) {
  const int copy = ::dup(fd);
  if (copy < 0 || ::lseek(copy, 0, SEEK_SET) != 0) {
    if (copy >= 0) ::close(copy);
    throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  }
  GzFile file(gzdopen(copy, "rb"));
  if (!file) {
    ::close(copy);
    throw Error(fmt::format("{}: cannot open: out of memory", path));
  }
  return file;
}

// Up to `size` bytes of the stream; 0 at its end. Errors name the path.
size_t read_gzip(const std::string& path, gzFile_s* file, char* buffer, size_t size) {
  const int got = gzread(file, buffer, static_cast<unsigned>(size));
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (got < 0 || (code != Z_OK && code != Z_STREAM_END)) {
    throw Error(fmt::format("{}: gzip error: {}", path, io::gzip_error_text(code, message)));
  }
  return static_cast<size_t>(got);
}

// Reads into `text` until the end, into the capacity it was given first
// (`expected` bytes and one more), so the buffer is allocated once; a file
// that grew meanwhile grows it. Fails past `max_bytes`.
template <class Read>
std::string read_chunks(const std::string& path, int64_t max_bytes, bool compressed,
                        uint64_t expected, Read read) {
  const auto limit = static_cast<uint64_t>(max_bytes);
  std::string text;
  // One byte past the size, so the end is seen without a reallocation.
  text.reserve(static_cast<size_t>(std::min(expected, limit) + 1));
  while (true) {
    const size_t old_size = text.size();
    // Read one byte past the limit, so a file of exactly max_bytes passes.
    const uint64_t room = limit + 1 - old_size;
    const size_t spare = text.capacity() > old_size ? text.capacity() - old_size : kChunkBytes;
    const auto chunk = static_cast<size_t>(std::min<uint64_t>({kChunkBytes, room, spare}));
    text.resize(old_size + chunk);
    const size_t got = read(text.data() + old_size, chunk);
    text.resize(old_size + got);
    if (text.size() > limit) throw too_big(path, max_bytes, compressed);
    if (got == 0) return text;
  }
}

std::string read_plain(const std::string& path, int64_t max_bytes, int fd) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    throw Error(fmt::format("{}: cannot read: {}", path, std::strerror(errno)));
  }
  // The size is known: a file past the limit is refused before any read.
  if (static_cast<uint64_t>(info.st_size) > static_cast<uint64_t>(max_bytes)) {
    throw too_big(path, max_bytes, false);
  }
  return read_chunks(path, max_bytes, false, static_cast<uint64_t>(info.st_size),
                     [&](char* buffer, size_t size) -> size_t {
                       while (true) {
                         const ssize_t got = ::read(fd, buffer, size);
                         if (got >= 0) return static_cast<size_t>(got);
                         if (errno == EINTR) continue;
                         throw Error(
                             fmt::format("{}: read error: {}", path, std::strerror(errno)));
                       }
                     });
}

// The size of the decompressed data, found by inflating it into a small
// buffer: a file that inflates past the limit stops there having held 1 MiB,
// never the output.
uint64_t inflated_size(const std::string& path, int64_t max_bytes, int fd) {
  const GzFile file = open_gzip(path, fd);
  std::vector<char> scratch(kChunkBytes);
  uint64_t total = 0;
  while (const size_t got = read_gzip(path, file.get(), scratch.data(), scratch.size())) {
    total += got;
    if (total > static_cast<uint64_t>(max_bytes)) throw too_big(path, max_bytes, true);
  }
  return total;
}

std::string read_gzip_file(const std::string& path, int64_t max_bytes, int fd) {
  check_gzip_magic(path, fd);
  // Inflating twice costs time, not memory: the second pass fills a buffer
  // of the exact size, where growing one as data arrives would, near the
  // limit, hold the old and the new buffer (twice the limit) at once.
  const uint64_t size = inflated_size(path, max_bytes, fd);
  const GzFile file = open_gzip(path, fd);
  return read_chunks(path, max_bytes, true, size, [&](char* buffer, size_t bytes) {
    return read_gzip(path, file.get(), buffer, bytes);
  });
}

}  // namespace

std::string read_file_text(const std::string& path, int64_t max_bytes) {
  if (max_bytes < 0) {
    throw Error(fmt::format("{}: max_bytes {}, expected 0 or more", path, max_bytes));
  }
  // Refuses a FIFO or a device before an open that could block.
  const Descriptor fd(io::open_regular_file(path));
  return ends_with(path, ".gz") ? read_gzip_file(path, max_bytes, fd.get())
                                : read_plain(path, max_bytes, fd.get());
}

}  // namespace trainloop::data::detail
