#include "trainloop/output_lock.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <utility>

#include "error_text.h"
#include "trainloop/error.h"

namespace trainloop {

namespace fs = std::filesystem;

namespace {

struct Held {
  int descriptor = -1;
  int count = 0;
  // A forked child inherits the registry but not the right to write: its
  // holds are its parent's.
  pid_t owner = 0;
};

// flock locks belong to an open file description, so a second open of the
// same lock file in this process would conflict with the first: holds in one
// process share one descriptor and count.
std::mutex& registry_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::map<std::string, Held>& registry() {
  static std::map<std::string, Held> held;
  return held;
}


// What the holder wrote into the lock file: its PID, or nothing yet.
std::string holder_of(int descriptor) {
  char text[64] = {};
  const ssize_t read = pread(descriptor, text, sizeof text - 1, 0);
  std::string pid(text, read > 0 ? static_cast<size_t>(read) : 0);
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  return pid;
}

// The directory the lock file goes into, made when missing, and its
// canonical form (so "run" and "./run/" are one output).
fs::path lock_path(const std::string& path, OutputKind kind) {
  if (path.empty()) throw Error("output lock: the path is empty");
  fs::path output(path);
  fs::path directory;
  std::string name;
  if (kind == OutputKind::directory) {
    directory = output;
    name = ".trainloop.lock";
  } else {
    if (!output.has_filename()) {
      throw Error(fmt::format("{}: expected a file name, found a directory path", path));
    }
    directory = output.has_parent_path() ? output.parent_path() : fs::path(".");
    name = "." + output.filename().string() + ".trainloop.lock";
  }
  std::error_code error;
  fs::create_directories(directory, error);
  if (error) {
    throw Error(fmt::format("{}: cannot create the directory {}: {}", path, directory.string(),
                            error.message()));
  }
  const fs::path canonical = fs::canonical(directory, error);
  if (error) throw Error(fmt::format("{}: {}", path, error.message()));
  return canonical / name;
}

// Opens and locks `file`; returns the descriptor. A releasing holder
// removes the file, so a lock taken on a file that is then no longer at
// the path is worthless: try again on the new one.
int acquire(const std::string& path, const std::string& file) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int descriptor = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (descriptor < 0) {
      throw Error(fmt::format("{}: cannot create the lock file {}: {}", path, file,
                              trainloop::detail::errno_text(errno)));
    }
    if (::flock(descriptor, LOCK_EX | LOCK_NB) != 0) {
      const int code = errno;
      const std::string holder = code == EWOULDBLOCK ? holder_of(descriptor) : "";
      ::close(descriptor);
      if (code != EWOULDBLOCK) {
        throw Error(fmt::format("{}: cannot lock {}: {}", path, file, trainloop::detail::errno_text(code)));
      }
      throw Error(fmt::format(
          "{}: in use by another process{}: two runs must not write into one output; wait for "
          "it to end or choose another",
          path, holder.empty() ? "" : fmt::format(" (PID {})", holder)));
    }
    struct stat opened {};
    struct stat named {};
    if (::fstat(descriptor, &opened) == 0 && ::stat(file.c_str(), &named) == 0 &&
        opened.st_dev == named.st_dev && opened.st_ino == named.st_ino) {
      const std::string pid = fmt::format("{}\n", ::getpid());
      if (::ftruncate(descriptor, 0) != 0 ||
          ::pwrite(descriptor, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
        // The lock holds without the PID; only the message of a second
        // process is poorer.
      }
      return descriptor;
    }
    ::close(descriptor);
  }
  throw Error(fmt::format("{}: cannot lock {}: it keeps being replaced", path, file));
}

}  // namespace

OutputLock::OutputLock(std::string path, OutputKind kind)
    : path_(std::move(path)), lock_file_(lock_path(path_, kind).string()) {
  std::lock_guard<std::mutex> guard(registry_mutex());
  Held& held = registry()[lock_file_];
  if (held.count > 0 && held.owner != ::getpid()) {
    // Closing the inherited descriptor leaves the parent's lock as it is.
    ::close(held.descriptor);
    held = Held();
  }
  if (held.count == 0) {
    try {
      held.descriptor = acquire(path_, lock_file_);
      held.owner = ::getpid();
    } catch (...) {
      registry().erase(lock_file_);
      throw;
    }
  }
  ++held.count;
}

OutputLock::~OutputLock() {
  if (lock_file_.empty()) return;
  std::lock_guard<std::mutex> guard(registry_mutex());
  const auto found = registry().find(lock_file_);
  if (found == registry().end() || found->second.owner != ::getpid() ||
      --found->second.count > 0) {
    return;
  }
  // Removed while still locked, so no one can lock the old file after we
  // let go (see acquire).
  ::unlink(lock_file_.c_str());
  ::close(found->second.descriptor);
  registry().erase(found);
}

OutputLock::OutputLock(OutputLock&& other) noexcept
    : path_(std::move(other.path_)), lock_file_(std::exchange(other.lock_file_, std::string())) {}

OutputLock& OutputLock::operator=(OutputLock&& other) noexcept {
  if (this != &other) {
    OutputLock released(std::move(*this));
    path_ = std::move(other.path_);
    lock_file_ = std::exchange(other.lock_file_, std::string());
  }
  return *this;
}

}  // namespace trainloop
