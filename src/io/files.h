#pragma once

// Whole-file reads and atomic writes, shared by everything that writes a file
// a killed run must not leave half-written. Private to the library.

#include <cstddef>
#include <string>
#include <string_view>

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

/// The contents of the regular file at `path`. Throws `Error` naming the file
/// when it is missing, not a regular file, unreadable, or larger than
/// `max_bytes` (so a wrong path never makes an absurd allocation).
std::string read_file(const std::string& path, size_t max_bytes);

/// What went wrong in a zlib gzip read, from gzerror's `code` and `message`:
/// the system's error for Z_ERRNO, else zlib's message without the "<fd:3>: "
/// it puts first after gzdopen (the caller's error names the path).
std::string gzip_error_text(int code, const char* message);

}  // namespace trainloop::io
