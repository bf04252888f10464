#pragma once

// The library's file reading (read_file.cpp: every reader of a file opens it
// here) and atomic writes (files.cpp), shared by everything that writes a file
// a killed run must not leave half-written. Private to the library.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

struct gzFile_s;

namespace trainloop::io {

/// Writes `bytes` to a hidden temporary file next to `path`, then renames it
/// over `path`, so readers see the old file or the new one, never a part.
/// With `durable`, the data is fsynced before the rename and the directory
/// after it, so the new file survives a power cut too. Throws `Error` naming
/// `path` on failure; the temporary file is removed.
void write_atomically(const std::string& path, std::string_view bytes, bool durable = false);

/// Flushes a file's or a directory's data and metadata to the disk (fsync).
/// Throws `Error` naming `path` on failure.
void sync_path(const std::string& path);

/// Opens the regular file at `path` for reading and returns its descriptor.
/// What `path` is gets checked before the open, and again on the open
/// descriptor, so a FIFO, a device or a socket is refused at once instead of
/// blocking the open (or the first read) forever. Throws `Error` naming the
/// file: "x.pt: not a regular file (a FIFO)", "…: cannot open: …".
int open_regular_file(const std::string& path);

/// A regular file read from its first byte to its last: as it is, or, with
/// `gunzip` and a name ending in ".gz", inflated through zlib. Opened with
/// open_regular_file, so a FIFO or a device is refused at once. Every error
/// names the path.
class InputFile {
 public:
  /// Throws `Error` for what open_regular_file refuses, and for a ".gz" file
  /// (with `gunzip`) that does not start with the gzip magic: a file named
  /// .gz that is not gzip is more likely a mistake than plain data.
  explicit InputFile(const std::string& path, bool gunzip = false);
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile();

  /// Reads up to `size` bytes into `buffer`; fewer only at the end of the
  /// data. Throws `Error` for a read error or corrupt gzip data ("x.gz: gzip
  /// error: incorrect data check"). A gzip stream cut short ends early
  /// instead, so a format that knows its length can say what is missing;
  /// check_complete() reports the cut.
  size_t read(void* buffer, size_t size);
  /// Throws `Error` ("…: gzip error: unexpected end of file") when the reads
  /// so far ended at a gzip stream cut short.
  void check_complete() const;
  /// Reads again from the first byte.
  void rewind();

  bool compressed() const { return gz_ != nullptr; }
  /// The file's size on disk when it was opened.
  uint64_t size_on_disk() const { return size_on_disk_; }
  const std::string& path() const { return path_; }

 private:
  size_t read_plain(char* out, size_t size);
  size_t read_gzip(char* out, size_t size);

  std::string path_;
  int fd_ = -1;             // owned unless gz_ has taken it over
  gzFile_s* gz_ = nullptr;  // owns the descriptor once set
  uint64_t size_on_disk_ = 0;
  bool cut_short_ = false;
};

/// How read_file reads a file.
struct ReadOptions {
  /// The most bytes (after decompression) a file may hold; checked as the
  /// data arrives, so a small file that inflates to gigabytes stops there.
  size_t max_bytes = std::numeric_limits<size_t>::max();
  /// Inflate a file whose name ends in ".gz" (see InputFile).
  bool gunzip = false;
  /// Named in the error for a file past `max_bytes`, e.g. "the max_bytes
  /// limit", so the message says which setting to change.
  std::string limit_name;
};

/// The contents of the regular file at `path`, in a buffer allocated once
/// (a gzip file is inflated twice: once into a small buffer to learn its
/// size, so refusing one past the limit holds 1 MiB, not the limit). Throws
/// `Error` naming the file when it is missing, not a regular file,
/// unreadable, corrupt gzip, or larger than `max_bytes` ("x: 3 bytes,
/// expected at most 2" when the size on disk says so, "x.gz: more than 2
/// bytes after decompression, expected at most that" when the data does).
std::string read_file(const std::string& path, const ReadOptions& options = {});
/// The plain file at `path`, at most `max_bytes` bytes of it.
std::string read_file(const std::string& path, size_t max_bytes);

}  // namespace trainloop::io
