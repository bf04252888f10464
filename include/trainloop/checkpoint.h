#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "trainloop/export.h"
// Weights I/O lived here before it had a header of its own.
#include "trainloop/weights.h"

namespace trainloop {

/// The checkpoint format this build writes, and the only one it reads.
inline constexpr int kCheckpointFormat = 3;

/// Where a resumed fit continues: `epoch` epochs and then `batch` training
/// batches of the next one are done. An epoch-end checkpoint has batch 0.
struct ResumePoint {
  int64_t epoch = 0;
  int64_t batch = 0;
};

/// What a checkpoint's manifest says about it.
struct CheckpointInfo {
  /// The checkpoint directory.
  std::string path;
  /// Where a fit resumed from it continues.
  ResumePoint resume;
  /// Optimizer updates done when it was taken.
  int64_t global_step = 0;
  /// Training batches per epoch of the fit that wrote it (per rank).
  int64_t training_batches = 0;
  /// Processes of the data-parallel fit that wrote it (1: one process). A
  /// resume needs as many.
  int64_t world_size = 1;
  /// The monitored metric's name and value, when the writer gave them.
  std::string monitor;
  std::optional<double> monitor_value;
};

/// Extra facts `TrainingLoop::save_checkpoint` records in the manifest.
struct CheckpointNote {
  /// A metric name and its value now, e.g. "val_loss" (for keeping the best).
  std::string monitor;
  std::optional<double> monitor_value;
};

/// Reads and checks a checkpoint's manifest and files (sizes and CRC-32s).
/// Throws `Error` naming the file and what is wrong, e.g.
/// `run/ckpt/epoch0002-batch000000/model.pt: 1024 bytes, the manifest says 245482`.
TRAINLOOP_API CheckpointInfo verify_checkpoint(const std::string& path);

/// The names of the checkpoint directories `callbacks::checkpoint` writes in
/// `directory`, oldest first (by position), without checking them. Empty
/// when the directory holds none or does not exist.
TRAINLOOP_API std::vector<std::string> checkpoint_names(const std::string& directory);

/// The checkpoint directory name for a resume point, e.g. "epoch0002-batch000013".
TRAINLOOP_API std::string checkpoint_name(ResumePoint resume);

}  // namespace trainloop
