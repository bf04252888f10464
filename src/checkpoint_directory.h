#pragma once

// The checkpoint directory: written atomically, read back whole and
// verified, and the newest valid one found among many. It knows files, not
// the loop that fills them. Private to the library.

#include <torch/torch.h>

#include <map>
#include <optional>
#include <string>

#include "checkpoint_manifest.h"

namespace trainloop::detail {

/// A new random identity for a checkpoint (16 hexadecimal digits).
std::string new_checkpoint_id();

/// Writes state.pt's identity record: `id` and the position, which the
/// manifest must repeat (see `read_checkpoint`).
void write_identity(torch::serialize::OutputArchive& state, const std::string& id,
                    ResumePoint resume, int64_t global_step);

/// Writes `files` and their manifest (`manifest.files` is filled from them)
/// into the directory `path`, atomically: everything goes to a temporary
/// directory beside it, each file and the directory are fsynced, and it is
/// renamed into place (replacing an older `path`). Throws `Error` naming
/// what could not be written.
void write_checkpoint(const std::string& path, Manifest manifest,
                      const std::map<std::string, std::string>& files);

/// A verified checkpoint, its files read into memory (so what was checked
/// is what gets loaded).
struct LoadedCheckpoint {
  Manifest manifest;
  std::map<std::string, std::string> files;
};

/// Reads `path` (a checkpoint directory) and checks the manifest, every
/// file's size and CRC-32, the directory's name and state.pt's identity
/// against it. Throws `Error` naming the file.
LoadedCheckpoint read_checkpoint(const std::string& path);

/// The checkpoint a resume from `path` uses: `path` itself when it holds a
/// manifest, else the newest valid checkpoint in it (invalid newer ones are
/// reported on stderr). Empty, with a line on stderr, when `path` does not
/// exist or holds no checkpoint. Throws `Error` when `path` is an invalid
/// checkpoint or every checkpoint in it is invalid.
std::optional<LoadedCheckpoint> load_for_resume(const std::string& path);

}  // namespace trainloop::detail
