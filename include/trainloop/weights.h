#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/model.h"

namespace trainloop {

/// Saves the model's parameters and buffers (on the CPU) as a state dict to
/// `path`, atomically, as Python's `torch.save(model.state_dict())` writes
/// it: `torch.load(path)` with its defaults (weights_only=True in PyTorch
/// 2.6+) and in PyTorch 1.13 returns an OrderedDict of tensors for
/// `model.load_state_dict`. Throws `Error` naming the path.
TRAINLOOP_API void save_weights(const Model& model, const std::string& path);

/// Loads what `save_weights` (or Python's `torch.save(model.state_dict())`)
/// wrote into `model`, in place. The file is read as a state dict and
/// nothing else: tensors, Parameters and OrderedDicts are rebuilt, and a
/// pickle that calls any other function is refused. Throws `Error` naming the
/// path and the first parameter or buffer whose name or shape does not match,
/// leaving the model as it was.
TRAINLOOP_API void load_weights(Model& model, const std::string& path);

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

}  // namespace trainloop
