#pragma once

// A checkpoint's manifest.json: what it holds, written and parsed. Private
// to the library.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trainloop/checkpoint.h"

namespace trainloop::detail {

/// The files of a checkpoint besides the manifest.
inline constexpr const char* kModelFile = "model.pt";
inline constexpr const char* kOptimizerFile = "optimizer.pt";
inline constexpr const char* kStateFile = "state.pt";

/// A checkpoint's manifest.
struct Manifest {
  /// Position, world size, monitor; `path` is not written (the directory is).
  CheckpointInfo info;
  /// Random, written into the manifest and state.pt alike.
  std::string id;
  int64_t epoch_count = 0;
  std::vector<std::map<std::string, double>> history;
  /// The training metrics' and callbacks' names, and the optimizer's
  /// parameter-group sizes, so a resume into another loop fails by name.
  std::vector<std::string> metrics;
  std::vector<std::string> callbacks;
  std::vector<int64_t> optimizer_groups;
  /// File name → (bytes, CRC-32).
  std::map<std::string, std::pair<uint64_t, uint32_t>> files;
};

/// The CRC-32 (zlib's) of `bytes`.
uint32_t crc32_of(std::string_view bytes);

/// The manifest's text, `files` included and its checksum last.
std::string manifest_text(const Manifest& manifest);

/// Parses manifest text; `source` names it in errors. Throws `Error` naming
/// the field and what was expected for anything but a well-formed manifest
/// of `kCheckpointFormat` whose checksum matches.
Manifest parse_manifest(std::string_view text, const std::string& source);

}  // namespace trainloop::detail
