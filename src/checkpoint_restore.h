#pragma once

// Reading a checkpoint back into a running fit: what TrainingLoop::fit calls
// when it resumes. Private to the library.

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trainloop/checkpoint.h"

namespace trainloop {
class TrainingLoop;
}

namespace trainloop::detail {

/// A checkpoint's manifest, parsed and checked.
struct Manifest {
  CheckpointInfo info;
  /// Random, written into the manifest and state.pt alike.
  std::string id;
  int64_t epoch_count = 0;
  std::vector<std::map<std::string, double>> history;
  std::vector<std::string> metrics;
  std::vector<std::string> callbacks;
  std::vector<int64_t> optimizer_groups;
  /// File name → (bytes, CRC-32).
  std::map<std::string, std::pair<uint64_t, uint32_t>> files;
};

/// Parses manifest text; `source` names it in errors. Throws `Error` naming
/// the field and what was expected for anything but a well-formed manifest
/// of `kCheckpointFormat`.
Manifest parse_manifest(std::string_view text, const std::string& source);

/// A verified checkpoint, its files read into memory (so what was checked
/// is what gets loaded).
struct LoadedCheckpoint {
  Manifest manifest;
  std::map<std::string, std::string> files;
};

/// Reads `path` (a checkpoint directory) and checks every file against the
/// manifest. Throws `Error` naming the file.
LoadedCheckpoint read_checkpoint(const std::string& path);

/// The checkpoint a resume from `path` uses: `path` itself when it holds a
/// manifest, else the newest valid checkpoint in it (each invalid newer one
/// is reported on stderr). Empty, with a line on stderr, when the directory
/// holds no checkpoint. Throws `Error` when `path` does not exist, `path` is
/// an invalid checkpoint, or every checkpoint in it is invalid.
std::optional<LoadedCheckpoint> load_for_resume(const std::string& path);

/// Restores the model, optimizer, running metrics, position and history, and
/// returns the first training batch to run. Throws `Error` naming the first
/// parameter, metric or setting that does not match the loop.
int64_t restore_loop(TrainingLoop& loop, const LoadedCheckpoint& checkpoint);

/// Restores every callback's state (after fit_start), then the random
/// generators, last, so nothing draws from them before training goes on.
void restore_callbacks(TrainingLoop& loop, const LoadedCheckpoint& checkpoint);

/// Throws `Error` unless every callback has its own state key and, when
/// checkpoints may be taken inside epochs, every training metric can save
/// its running value: what `save_checkpoint` would fail on, checked early.
void check_checkpointable(const TrainingLoop& loop, bool inside_epochs);

/// `key` as an archive key: "cb_" and the key with everything but letters,
/// digits and '_' replaced by '_'.
std::string archive_key(const std::string& key);

}  // namespace trainloop::detail
