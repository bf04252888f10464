#pragma once

#include <string>

#include "trainloop/export.h"

namespace trainloop {

/// Whether an output is one file or a directory of files.
enum class OutputKind { file, directory };

/// A file or directory that a callback writes (see `Callback::outputs`).
struct OutputPath {
  std::string path;
  OutputKind kind = OutputKind::file;
};

/// An exclusive hold on an output — a directory or a file a fit writes —
/// for as long as the object lives, so that two processes never write into
/// one output and destroy each other's run. `TrainingLoop::fit` holds one
/// for every output its callbacks declare (`Callback::outputs`); a program
/// can hold one over all it writes (the demo does, on `--out`).
///
/// The lock is `flock` on a small file: `<directory>/.trainloop.lock`, or
/// `.<name>.trainloop.lock` beside a file. It holds the holder's PID, names
/// it in the error a second process gets, and is removed on release. A
/// killed holder releases it with its last file descriptor. Within one
/// process the same output may be held more than once (each hold counts).
class TRAINLOOP_API OutputLock {
 public:
  /// Takes the lock at once, never waiting: creates the directory (for a
  /// file: its parent) when missing. Throws `Error` naming `path` when
  /// another process holds it (with that process's PID) or the lock file
  /// cannot be made.
  OutputLock(std::string path, OutputKind kind);
  ~OutputLock();
  OutputLock(OutputLock&& other) noexcept;
  OutputLock& operator=(OutputLock&& other) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

  /// The output, as given.
  const std::string& path() const { return path_; }
  /// The lock file: two outputs are the same when their lock files are.
  const std::string& lock_file() const { return lock_file_; }

 private:
  std::string path_;
  std::string lock_file_;
};

}  // namespace trainloop
