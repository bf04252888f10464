#include "files.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "../error_text.h"
#include "trainloop/error.h"

namespace trainloop::io {

namespace {


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

}  // namespace

void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open to sync: {}", path, trainloop::detail::errno_text(errno)));
  const bool synced = ::fsync(fd) == 0;
  const int error = errno;
  ::close(fd);
  // Some file systems refuse fsync on a directory; that is no data loss.
  if (!synced && error != EINVAL && error != EROFS) {
    throw Error(fmt::format("{}: cannot sync to disk: {}", path, trainloop::detail::errno_text(error)));
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
                            directory.string(), trainloop::detail::errno_text(errno)));
  }
  int error = write_all(fd, bytes);
  // mkstemp creates 0600; what we write is meant to be read like any file.
  if (error == 0 && fchmod(fd, 0644) != 0) error = errno;
  if (error == 0 && durable && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error != 0) {
    std::remove(temp.c_str());
    throw Error(fmt::format("{}: cannot write {}: {}", path, temp, trainloop::detail::errno_text(error)));
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

}  // namespace trainloop::io
