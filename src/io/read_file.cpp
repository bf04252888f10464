// Reading: every reader of a file in the library opens it here.

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "../error_text.h"
#include "files.h"
#include "trainloop/error.h"

namespace trainloop::io {

namespace {

constexpr size_t kReadChunkBytes = size_t{1} << 20;


bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// zlib reads a file that is not gzip as plain data; one named .gz that is
// not gzip is more likely a mistake, so say so.
void check_gzip_magic(const std::string& path, int fd) {
  std::array<unsigned char, 2> magic{};
  const ssize_t read = ::pread(fd, magic.data(), magic.size(), 0);
  const size_t got = read < 0 ? 0 : static_cast<size_t>(read);
  if (got < magic.size()) {
    throw Error(fmt::format("{}: not a gzip file ({} bytes long, expected the gzip magic 1f 8b)",
                            path, got));
  }
  if (magic[0] != 0x1f || magic[1] != 0x8b) {
    throw Error(fmt::format("{}: not a gzip file (starts with {:02x} {:02x}, expected 1f 8b)", path,
                            magic[0], magic[1]));
  }
}

// What a file that is not a regular one is, for the error message.
const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a file";
}

Error not_regular(const std::string& path, mode_t mode) {
  return Error(fmt::format("{}: not a regular file ({})", path, kind_of(mode)));
}

// What went wrong in a gzip read: the system's error for Z_ERRNO, else
// zlib's message without the "<fd:3>: " it puts first after gzdopen.
Error gzip_error(const std::string& path, gzFile_s* file) {
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  std::string text = code == Z_ERRNO ? std::strerror(errno) : (message ? message : "");
  if (text.rfind("<fd:", 0) == 0 && text.find(">: ") != std::string::npos) {
    text.erase(0, text.find(">: ") + 3);
  }
  return Error(fmt::format("{}: gzip error: {}", path, text));
}

}  // namespace

int open_regular_file(const std::string& path) {
  // stat never blocks, where open of a FIFO waits for a writer.
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    throw Error(fmt::format("{}: cannot open: {}", path, trainloop::detail::errno_text(errno)));
  }
  if (!S_ISREG(info.st_mode)) throw not_regular(path, info.st_mode);
  // O_NONBLOCK: should a FIFO have taken the file's place since the stat, the
  // open still returns, and the fstat below refuses it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, trainloop::detail::errno_text(errno)));
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw not_regular(path, info.st_mode);
  }
  // Reads of a regular file ignore O_NONBLOCK; cleared all the same.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

InputFile::InputFile(const std::string& path, bool gunzip)
    : path_(path), fd_(open_regular_file(path)) {
  struct stat info {};
  if (::fstat(fd_, &info) != 0) {
    const int error = errno;
    ::close(fd_);
    throw Error(fmt::format("{}: cannot read: {}", path_, trainloop::detail::errno_text(error)));
  }
  size_on_disk_ = static_cast<uint64_t>(info.st_size);
  if (!gunzip || !ends_with(path_, ".gz")) return;
  try {
    check_gzip_magic(path_, fd_);
  } catch (...) {
    ::close(fd_);
    throw;
  }
  gz_ = gzdopen(fd_, "rb");
  if (gz_ == nullptr) {
    ::close(fd_);
    throw Error(fmt::format("{}: cannot open: out of memory", path_));
  }
}

InputFile::~InputFile() {
  if (gz_ != nullptr) {
    gzclose(gz_);
  } else {
    ::close(fd_);
  }
}

size_t InputFile::read(void* buffer, size_t size) {
  auto* out = static_cast<char*>(buffer);
  size_t total = 0;
  while (total < size) {
    const size_t want = std::min(size - total, kReadChunkBytes);
    const size_t got = gz_ != nullptr ? read_gzip(out + total, want) : read_plain(out + total, want);
    if (got == 0) break;
    total += got;
  }
  return total;
}

size_t InputFile::read_plain(char* out, size_t size) {
  while (true) {
    const ssize_t got = ::read(fd_, out, size);
    if (got >= 0) return static_cast<size_t>(got);
    if (errno != EINTR) throw Error(fmt::format("{}: read error: {}", path_, trainloop::detail::errno_text(errno)));
  }
}

size_t InputFile::read_gzip(char* out, size_t size) {
  const int got = gzread(gz_, out, static_cast<unsigned>(size));
  int code = Z_OK;
  gzerror(gz_, &code);
  // A stream cut short (Z_BUF_ERROR) still hands over what it had.
  if (got < 0 || (code != Z_OK && code != Z_BUF_ERROR)) throw gzip_error(path_, gz_);
  cut_short_ = code == Z_BUF_ERROR;
  return static_cast<size_t>(got);
}

void InputFile::check_complete() const {
  if (cut_short_) throw gzip_error(path_, gz_);
}

void InputFile::rewind() {
  cut_short_ = false;
  const bool done = gz_ != nullptr ? gzrewind(gz_) == 0 : ::lseek(fd_, 0, SEEK_SET) == 0;
  if (!done) throw Error(fmt::format("{}: cannot read: {}", path_, trainloop::detail::errno_text(errno)));
}

namespace {

Error too_big(const InputFile& file, const ReadOptions& options, std::optional<uint64_t> size) {
  const std::string limit =
      options.limit_name.empty() ? "" : fmt::format(" ({})", options.limit_name);
  if (size) {
    return Error(
        fmt::format("{}: {} bytes, expected at most {}{}", file.path(), *size, options.max_bytes, limit));
  }
  return Error(fmt::format("{}: more than {} bytes{}, expected at most that{}", file.path(),
                           options.max_bytes, file.compressed() ? " after decompression" : "",
                           limit));
}

// The size of the decompressed data, found by inflating it into a small
// buffer: a file that inflates past the limit stops there having held 1 MiB,
// never the output.
uint64_t inflated_size(InputFile& file, const ReadOptions& options) {
  std::vector<char> scratch(kReadChunkBytes);
  uint64_t total = 0;
  while (const size_t got = file.read(scratch.data(), scratch.size())) {
    total += got;
    if (total > options.max_bytes) throw too_big(file, options, std::nullopt);
  }
  file.check_complete();
  file.rewind();
  return total;
}

}  // namespace

std::string read_file(const std::string& path, const ReadOptions& options) {
  InputFile file(path, options.gunzip);
  // Inflating twice costs time, not memory: the second pass fills a buffer
  // of the exact size, where growing one as data arrives would, near the
  // limit, hold the old and the new buffer (twice the limit) at once.
  const uint64_t expected = file.compressed() ? inflated_size(file, options) : file.size_on_disk();
  // The size is known: a file past the limit is refused before any read.
  if (expected > options.max_bytes) throw too_big(file, options, expected);
  std::string bytes;
  // One byte past the size, so the end is seen without a reallocation.
  bytes.reserve(static_cast<size_t>(expected) + 1);
  while (true) {
    const size_t old_size = bytes.size();
    // Read one byte past the limit, so a file of exactly max_bytes passes;
    // a file that grew meanwhile grows the buffer.
    const size_t room = options.max_bytes - old_size;
    const size_t spare = bytes.capacity() > old_size ? bytes.capacity() - old_size : kReadChunkBytes;
    const size_t chunk = std::min({kReadChunkBytes, room < kReadChunkBytes ? room + 1 : kReadChunkBytes, spare});
    bytes.resize(old_size + chunk);
    const size_t got = file.read(bytes.data() + old_size, chunk);
    bytes.resize(old_size + got);
    if (bytes.size() > options.max_bytes) throw too_big(file, options, std::nullopt);
    if (got == 0) break;
  }
  file.check_complete();
  return bytes;
}

std::string read_file(const std::string& path, size_t max_bytes) {
  ReadOptions options;
  options.max_bytes = max_bytes;
  return read_file(path, options);
}

}  // namespace trainloop::io
