#pragma once

// What the fuzz targets share: a private scratch directory for inputs that
// the readers under test take by path.

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace trainloop::fuzz {

/// A directory of this process's own, made once, under /dev/shm when it
/// exists (inputs written there never touch the disk).
inline const std::filesystem::path& scratch_directory() {
  static const std::filesystem::path directory = [] {
    const std::filesystem::path base =
        std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    auto path = base / ("trainloop_fuzz_" + std::to_string(getpid()));
    std::filesystem::create_directories(path);
    return path;
  }();
  return directory;
}

/// Writes `size` bytes at `data` to `path`, replacing it.
inline void write_bytes(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return;
  if (size > 0) std::fwrite(data, 1, size, file);
  std::fclose(file);
}

}  // namespace trainloop::fuzz
