#include "files.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "trainloop/error.h"

namespace trainloop::io {

namespace {

std::string error_text(int error) { return std::strerror(error); }

// Writes all of `bytes`, retrying short writes and EINTR; returns errno or 0.
int write_all(int fd, std::string_view bytes) {
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    written += static_cast<size_t>(n);
  }
  return 0;
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

}  // namespace

int open_regular_file(const std::string& path) {
  // stat never blocks, where open of a FIFO waits for a writer.
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    throw Error(fmt::format("{}: cannot open: {}", path, error_text(errno)));
  }
  if (!S_ISREG(info.st_mode)) throw not_regular(path, info.st_mode);
  // O_NONBLOCK: should a FIFO have taken the file's place since the stat, the
  // open still returns, and the fstat below refuses it.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, error_text(errno)));
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    throw not_regular(path, info.st_mode);
  }
  // Reads of a regular file ignore O_NONBLOCK; cleared all the same.
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open to sync: {}", path, error_text(errno)));
  const bool synced = ::fsync(fd) == 0;
  const int error = errno;
  ::close(fd);
  // Some file systems refuse fsync on a directory; that is no data loss.
  if (!synced && error != EINVAL && error != EROFS) {
    throw Error(fmt::format("{}: cannot sync to disk: {}", path, error_text(error)));
  }
}

void write_atomically(const std::string& path, std::string_view bytes, bool durable) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path directory = target.has_parent_path() ? target.parent_path() : fs::path(".");
  // A hidden name in the same directory: rename is atomic only within one
  // file system, and a watcher globbing *.svg does not pick the temp file up.
  std::string temp = (directory / ("." + target.filename().string() + ".XXXXXX")).string();
  const int fd = mkstemp(temp.data());
  if (fd < 0) {
    throw Error(fmt::format("{}: cannot create a temporary file in {}: {}", path,
                            directory.string(), error_text(errno)));
  }
  int error = write_all(fd, bytes);
  // mkstemp creates 0600; what we write is meant to be read like any file.
  if (error == 0 && fchmod(fd, 0644) != 0) error = errno;
  if (error == 0 && durable && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    std::remove(temp.c_str());
    throw Error(fmt::format("{}: cannot write {}: {}", path, temp, error_text(error)));
  }
  std::error_code rename_error;
  fs::rename(temp, target, rename_error);
  if (rename_error) {
    std::remove(temp.c_str());
    throw Error(
        fmt::format("{}: cannot rename {} into place: {}", path, temp, rename_error.message()));
  }
  if (durable) sync_path(directory.string());
}

std::string gzip_error_text(int code, const char* message) {
  std::string text = code == Z_ERRNO ? std::strerror(errno) : (message ? message : "");
  if (text.rfind("<fd:", 0) == 0 && text.find(">: ") != std::string::npos) {
    text.erase(0, text.find(">: ") + 3);
  }
  return text;
}

std::string read_file(const std::string& path, size_t max_bytes) {
  const int fd = open_regular_file(path);
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    ::close(fd);
    throw Error(fmt::format("{}: cannot read: {}", path, error_text(error)));
  }
  const auto size = static_cast<size_t>(info.st_size);
  if (size > max_bytes) {
    ::close(fd);
    throw Error(fmt::format("{}: {} bytes, expected at most {}", path, size, max_bytes));
  }
  std::string bytes(size, '\0');
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, bytes.data() + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      throw Error(fmt::format("{}: cannot read: {}", path, error_text(error)));
    }
    if (n == 0) break;  // shrank while reading: keep what is there
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  bytes.resize(done);
  return bytes;
}

}  // namespace trainloop::io
