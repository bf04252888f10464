#pragma once

// A walk over a pickle's opcodes, run before LibTorch's unpickler sees
// untrusted bytes: LibTorch 1.13's unpickler reserves whatever length a
// string opcode claims (found by fuzz/weights_fuzzer: a 2.9 KB file asked for
// 1.6 GB), grows its memo to whatever index an opcode names, pops values
// from a stack it never checks the size of, and makes a tensor's storage as
// large as the pickle says, whatever the size of the record it reads. Private
// to the library.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

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

/// The first fault of `pickle` (protocol 0 to 5), e.g. "a string of
/// 1665400850 bytes at byte 12, where 300 remain"; empty when every opcode is
/// known, every length-prefixed argument lies inside `pickle`, every memo
/// index is below its size, no opcode pops more values than its MARK leaves
/// it (or a MARK it lacks), every persistent id is a storage tuple
/// ("storage", torch.<Type>Storage, key, location, element count), and a
/// STOP ends it with one value on the stack. The storages it names are
/// appended to `claims` when given.
std::string pickle_fault(std::string_view pickle, std::vector<StorageClaim>* claims = nullptr);

}  // namespace trainloop::io
