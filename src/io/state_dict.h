#pragma once

// A reader of the state dicts torch.save and torch::pickle_save write,
// which replaces LibTorch's unpickler for weights files, and a writer of
// state dicts as torch.save writes them. LibTorch 1.13's
// cannot read what Python's `torch.save(model.state_dict())` writes (the
// OrderedDict's _metadata, a one-entry dict's SETITEM, Parameters), and its
// unchecked stack, lengths and storages let hostile files crash it (see
// pickle.h). This one understands only what a state dict holds: a dict
// of names to tensors, rebuilt from their storages. Private to the library.

#include <torch/torch.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace trainloop::io {

/// One entry of a state dict: a tensor, or why the entry is not a usable
/// one (e.g. "is a quantized QInt8 tensor, expected a dense one").
struct StateEntry {
  std::string name;
  torch::Tensor tensor;
  std::string problem;
};

/// The entries of the state dict in `archive` (the bytes of a torch.save
/// zip), in the file's order. Throws `Error` whose text (without a file name)
/// names the first fault: of the zip or its pickle (see zip_archive_fault),
/// a call of anything but torch's tensor and parameter rebuilders and
/// OrderedDict, a top-level value that is not a dict of strings, or a tensor
/// whose view reaches outside its storage.
std::vector<StateEntry> read_state_dict(std::string_view archive);

/// The bytes of the zip that Python's `torch.save(state_dict)` writes for
/// these tensors, by name in this order: an OrderedDict, which
/// `torch.load(path)` returns with its defaults (weights_only=True in
/// PyTorch 2.6 and later) and in PyTorch 1.13, and `read_state_dict` reads.
/// Each tensor is written detached, on the CPU, contiguous and alone in its
/// storage. Throws `Error` for a tensor that is not dense (sparse, quantized)
/// or whose dtype torch.save has no storage class for.
std::string state_dict_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& entries);

}  // namespace trainloop::io
