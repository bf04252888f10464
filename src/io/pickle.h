#pragma once

// The one pickle interpreter of the library, for the data.pkl of the zip
// archives torch writes. It runs in two modes:
//
// - validate (`pickle_fault`), run before LibTorch's unpickler sees
//   untrusted bytes: LibTorch 1.13's unpickler reserves whatever length a
//   string opcode claims (found by fuzz/weights_fuzzer: a 2.9 KB file asked
//   for 1.6 GB), grows its memo to whatever index an opcode names, pops
//   values from a stack it never checks the size of, and makes a tensor's
//   storage as large as the pickle says, whatever the size of the record it
//   reads.
// - read (`read_state_dict_pickle`), which replaces LibTorch's unpickler for
//   weights files: LibTorch 1.13's cannot read what Python's
//   `torch.save(model.state_dict())` writes (the OrderedDict's _metadata, a
//   one-entry dict's SETITEM, Parameters). It makes every check of validate
//   mode, and understands only what a state dict holds: a dict of names to
//   tensors, rebuilt from their storages.
//
// Private to the library.

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "state_dict.h"
#include "zip_check.h"

namespace trainloop::io {

/// A storage a pickle's persistent id asks the archive for: the record
/// `key` (under the pickle's own folder, e.g. "archive/data/" for
/// "archive/data.pkl") must hold at least `bytes`.
struct StorageClaim {
  std::string key;
  uint64_t bytes = 0;
  uint64_t at = 0;  // the BINPERSID's byte in the pickle
};

/// One opcode of a pickle and its argument, as `walk_pickle` reads them.
struct PickleOp {
  unsigned char opcode = 0;
  uint64_t at = 0;          // the opcode's byte in the pickle
  std::string_view bytes;   // a counted or fixed argument's bytes, a line, GLOBAL's module
  std::string_view second;  // GLOBAL's name
  uint64_t number = 0;      // a fixed argument or a memo index, little-endian
};

/// Calls `visit` on each opcode of `pickle` (protocol 0 to 5) in turn, up to
/// and including STOP. Returns the first fault: an unknown opcode, an
/// argument cut short or longer than the pickle, a memo index beyond it, no
/// STOP, or what `visit` returned (empty to go on).
std::string walk_pickle(std::string_view pickle,
                        const std::function<std::string(const PickleOp&)>& visit);

/// Validate mode: the first fault of `pickle` (protocol 0 to 5), e.g. "a
/// string of 1665400850 bytes at byte 12, where 300 remain"; empty when every
/// opcode is known, every length-prefixed argument lies inside `pickle`,
/// every memo index is below its size, no opcode pops more values than its
/// MARK leaves it (or a MARK it lacks), every persistent id is a storage
/// tuple ("storage", torch.<Type>Storage, key, location, element count), and
/// a STOP ends it with one value on the stack. The storages it names are
/// appended to `claims` when given.
std::string pickle_fault(std::string_view pickle, std::vector<StorageClaim>* claims = nullptr);

/// Read mode: the entries of the state dict that `pickle` holds, in its
/// order, each storage read from `records` (an archive's entries by their
/// folded_case names) under the pickle's folder ("archive/data/" for
/// "archive/data.pkl"). Throws `Error` whose text names the first fault: of
/// an opcode (one of `pickle_fault`'s; one a state dict has no use for; a
/// call of anything but torch's tensor and parameter rebuilders and
/// OrderedDict; a storage whose record is missing, deflated or too short),
/// after the pickle's name; or a top-level value that is not a dict of
/// strings. A tensor whose view reaches outside its storage is an entry with
/// a problem.
std::vector<StateEntry> read_state_dict_pickle(const ZipEntry& pickle,
                                               const std::map<std::string, ZipEntry>& records);

/// The element type of a storage class torch pickles, by its name in module
/// torch ("FloatStorage"); nullopt for any other name.
std::optional<torch::ScalarType> storage_scalar_type(std::string_view storage_class);

/// The name in module torch of the storage class of `type`
/// ("FloatStorage"); nullptr for a type torch has no storage class for.
const char* storage_class_name(torch::ScalarType type);

}  // namespace trainloop::io
