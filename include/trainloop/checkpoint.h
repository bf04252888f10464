#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/model.h"

namespace trainloop {

class TrainingLoop;

/// The checkpoint format this build writes, and the only one it reads.
inline constexpr int kCheckpointFormat = 2;

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

/// Extra facts `save_checkpoint` records in the manifest.
struct CheckpointNote {
  /// A metric name and its value now, e.g. "val_loss" (for keeping the best).
  std::string monitor;
  std::optional<double> monitor_value;
};

/// Writes everything a fit needs to continue exactly into the directory
/// `path`: `model.pt` (parameters and buffers as a state dict that Python's
/// `torch.load` reads), `optimizer.pt`, `state.pt` (random generators,
/// running metrics, every callback's `save`) and `manifest.json` (format,
/// position, history, and each file's size and CRC-32). Everything goes to a
/// temporary directory beside `path`, each file and the directory are
/// fsynced, and it is renamed into place (replacing an older `path`), so a
/// run killed at any moment leaves either the old checkpoint or the new one.
/// Call it while the loop runs a fit, between batches. Throws `Error` naming
/// the file that could not be written. In a data-parallel fit every rank
/// calls it at the same point: each rank's random generators and running
/// metrics are gathered into `state.pt` (so each resumes exactly), rank 0
/// alone writes, and no rank returns before the checkpoint is in place (each
/// throws `Error` if rank 0 failed).
TRAINLOOP_API void save_checkpoint(TrainingLoop& loop, const std::string& path, ResumePoint resume,
                                   const CheckpointNote& note = {});

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

/// Saves the model's parameters and buffers (on the CPU) as a state dict to
/// `path`, atomically, as Python's `torch.save(model.state_dict())` writes
/// it: `torch.load(path)` with its defaults (weights_only=True in PyTorch
/// 2.6+) and in PyTorch 1.13 returns an OrderedDict of tensors for
/// `model.load_state_dict`. Throws `Error` naming the path.
TRAINLOOP_API void save_weights(const Model& model, const std::string& path);

/// Saves named tensors (on the CPU) to `path`, atomically, as Python's
/// `torch.save(dict)` writes them: `torch.load(path)` with its defaults
/// returns an OrderedDict in this order. For handing data, predictions or
/// anything else that is tensors to Python. Throws `Error` naming the path,
/// also for a tensor that is not dense or has a dtype torch.save cannot store.
TRAINLOOP_API void save_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                const std::string& path);

/// Reads the dict of tensors in a file that `save_tensors`, `save_weights`,
/// Python's `torch.save` or `torch::pickle_save` wrote, in the file's order.
/// As `load_weights`, no pickled function runs. Throws `Error` naming the path.
TRAINLOOP_API std::vector<std::pair<std::string, torch::Tensor>> load_tensors(const std::string& path);

/// Loads what `save_weights` (or Python's `torch.save(model.state_dict())`)
/// wrote into `model`, in place. The file is read as a state dict and
/// nothing else: tensors, Parameters and OrderedDicts are rebuilt, and a
/// pickle that calls any other function is refused. Throws `Error` naming the
/// path and the first parameter or buffer whose name or shape does not match,
/// leaving the model as it was.
TRAINLOOP_API void load_weights(Model& model, const std::string& path);

}  // namespace trainloop
