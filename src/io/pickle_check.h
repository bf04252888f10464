#pragma once

// A walk over a pickle's opcodes, run before LibTorch's unpickler sees
// untrusted bytes: LibTorch 1.13's unpickler reserves whatever length a
// string opcode claims (found by fuzz/weights_fuzzer: a 2.9 KB file asked for
// 1.6 GB), grows its memo to whatever index an opcode names, and pops values
// from a stack it never checks the size of. Private to the library.

#include <string>
#include <string_view>

namespace trainloop::io {

/// The first fault of `pickle` (protocol 0 to 5), e.g. "a string of
/// 1665400850 bytes at byte 12, where 300 remain"; empty when every opcode is
/// known, every length-prefixed argument lies inside `pickle`, every memo
/// index is below its size, no opcode pops more values than its MARK leaves
/// it (or a MARK it lacks), and a STOP ends it with one value on the stack.
std::string pickle_fault(std::string_view pickle);

}  // namespace trainloop::io
