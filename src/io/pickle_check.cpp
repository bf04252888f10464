#include "pickle_check.h"

#include <fmt/format.h>

#include <cstdint>
#include <vector>

namespace trainloop::io {

namespace {

// How an opcode's argument is laid out.
enum class Argument {
  none,
  fixed,       // `size` bytes
  counted,     // a `size`-byte little-endian length, then that many bytes
  memo_index,  // a `size`-byte little-endian memo index
  line,        // text up to a newline
  two_lines,   // GLOBAL and INST: module and name, each up to a newline
  text_memo,   // GET and PUT: a decimal memo index up to a newline
  unknown,
};

struct Layout {
  Argument argument = Argument::unknown;
  int size = 0;
};

Layout layout_of(unsigned char opcode) {
  switch (opcode) {
    case '(': case '.': case '0': case '1': case '2': case 'N': case 'R': case 'a': case 'b':
    case 'd': case '}': case 'e': case 'l': case ']': case 'o': case 's': case 't': case ')':
    case 'u': case 'Q': case 0x81: case 0x85: case 0x86: case 0x87: case 0x88: case 0x89:
    case 0x8f: case 0x90: case 0x91: case 0x92: case 0x93: case 0x94: case 0x97: case 0x98:
      return {Argument::none, 0};
    case 'K': case 0x80: case 0x82: return {Argument::fixed, 1};
    case 'M': case 0x83: return {Argument::fixed, 2};
    case 'J': case 0x84: return {Argument::fixed, 4};
    case 'G': case 0x95: return {Argument::fixed, 8};  // FRAME's length only announces
    case 'U': case 0x8c: case 'C': case 0x8a: return {Argument::counted, 1};
    case 'T': case 'X': case 'B': case 0x8b: return {Argument::counted, 4};
    case 0x8d: case 0x8e: case 0x96: return {Argument::counted, 8};
    case 'q': case 'h': return {Argument::memo_index, 1};
    case 'r': case 'j': return {Argument::memo_index, 4};
    case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': return {Argument::line, 0};
    case 'c': case 'i': return {Argument::two_lines, 0};
    case 'g': case 'p': return {Argument::text_memo, 0};
    default: return {};
  }
}

// The pickle machine's stack, as far as its shape: how many values it holds
// and where each open MARK stands. LibTorch 1.13's unpickler pops without
// checking, so a REDUCE or TUPLE3 on too short a stack frees memory it does
// not own (found by fuzz/weights_fuzzer).
struct Stack {
  uint64_t depth = 0;
  std::vector<uint64_t> marks;

  // Values above the topmost MARK: all an opcode other than a MARK's
  // consumer may pop, as in Python's unpickler.
  uint64_t above_mark() const { return depth - (marks.empty() ? 0 : marks.back()); }
};

// How many values an opcode pops (beyond a MARK's) and pushes.
struct StackEffect {
  bool consumes_mark = false;
  int pops = 0;
  int pushes = 0;
  bool pairs = false;  // DICT and SETITEMS take keys and values
};

StackEffect stack_effect_of(unsigned char opcode) {
  switch (opcode) {
    case 't': case 'l': case 0x91: case 'i': case 'o': return {true, 0, 1};
    case 'd': return {true, 0, 1, true};
    case '1': return {true, 0, 0};
    case 'e': case 0x90: return {true, 1, 1};      // the list or set below the MARK stays
    case 'u': return {true, 1, 1, true};           // so does the dict
    case '0': return {false, 1, 0};
    case '2': return {false, 1, 2};
    case 'p': case 'q': case 'r': case 0x94: case 0x98: case 'Q': case 0x85:
      return {false, 1, 1};
    case 'a': case 'b': case 'R': case 0x81: case 0x93: case 0x86: return {false, 2, 1};
    case 's': case 0x92: case 0x87: return {false, 3, 1};
    case '(': case 0x80: case 0x95: case '.': return {false, 0, 0};
    default: return {false, 0, 1};  // every other known opcode pushes one value
  }
}

// The first fault of running `opcode` (at byte `start`) on `stack`.
std::string stack_fault(unsigned char opcode, uint64_t start, Stack& stack) {
  if (opcode == '(') {
    stack.marks.push_back(stack.depth);
    return {};
  }
  if (opcode == '.') {
    if (!stack.marks.empty() || stack.depth != 1) {
      return fmt::format("STOP at byte {} leaves {} values and {} MARKs, expected 1 value",
                         start, stack.depth, stack.marks.size());
    }
    return {};
  }
  const StackEffect effect = stack_effect_of(opcode);
  if (effect.consumes_mark) {
    if (stack.marks.empty()) {
      return fmt::format("opcode 0x{:02x} at byte {} has no MARK before it", opcode, start);
    }
    if (effect.pairs && stack.above_mark() % 2 != 0) {
      return fmt::format("opcode 0x{:02x} at byte {} pairs keys with values, but {} remain",
                         opcode, start, stack.above_mark());
    }
    stack.depth = stack.marks.back();
    stack.marks.pop_back();
  }
  if (stack.above_mark() < static_cast<uint64_t>(effect.pops)) {
    return fmt::format("opcode 0x{:02x} at byte {} needs {} values on the stack, found {}",
                       opcode, start, effect.pops, stack.above_mark());
  }
  stack.depth = stack.depth - static_cast<uint64_t>(effect.pops) +
                static_cast<uint64_t>(effect.pushes);
  return {};
}

uint64_t little_endian(std::string_view bytes, uint64_t at, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) {
    value |= uint64_t{static_cast<unsigned char>(bytes[at + static_cast<uint64_t>(i)])} << (8 * i);
  }
  return value;
}

}  // namespace

std::string pickle_fault(std::string_view pickle) {
  const uint64_t size = pickle.size();
  uint64_t at = 0;
  Stack stack;
  while (at < size) {
    const auto opcode = static_cast<unsigned char>(pickle[at]);
    const uint64_t start = at++;
    const Layout layout = layout_of(opcode);
    const uint64_t remaining = size - at;
    switch (layout.argument) {
      case Argument::unknown:
        return fmt::format("unknown opcode 0x{:02x} at byte {}", opcode, start);
      case Argument::none:
        break;
      case Argument::fixed:
        if (remaining < static_cast<uint64_t>(layout.size)) {
          return fmt::format("opcode 0x{:02x} at byte {} is cut short", opcode, start);
        }
        at += static_cast<uint64_t>(layout.size);
        break;
      case Argument::counted:
      case Argument::memo_index: {
        if (remaining < static_cast<uint64_t>(layout.size)) {
          return fmt::format("opcode 0x{:02x} at byte {} is cut short", opcode, start);
        }
        const uint64_t value = little_endian(pickle, at, layout.size);
        at += static_cast<uint64_t>(layout.size);
        if (layout.argument == Argument::memo_index) {
          // Each memo entry takes an opcode, so no valid index reaches the size.
          if (value >= size) {
            return fmt::format("memo index {} at byte {} in a pickle of {} bytes", value, start,
                               size);
          }
        } else {
          if (value > size - at) {
            return fmt::format("a string of {} bytes at byte {}, where {} remain", value, start,
                               size - at);
          }
          at += value;
        }
        break;
      }
      case Argument::line:
      case Argument::two_lines:
      case Argument::text_memo: {
        const int lines = layout.argument == Argument::two_lines ? 2 : 1;
        for (int line = 0; line < lines; ++line) {
          const size_t newline = pickle.find('\n', at);
          if (newline == std::string_view::npos) {
            return fmt::format("opcode 0x{:02x} at byte {} has no end of line", opcode, start);
          }
          if (layout.argument == Argument::text_memo) {
            uint64_t index = 0;
            for (uint64_t i = at; i < newline; ++i) {
              const char digit = pickle[i];
              if (digit < '0' || digit > '9' || index >= size) {
                return fmt::format("memo index at byte {} is not a number below {}", start, size);
              }
              index = index * 10 + static_cast<uint64_t>(digit - '0');
            }
            if (index >= size) {
              return fmt::format("memo index at byte {} is not a number below {}", start, size);
            }
          }
          at = newline + 1;
        }
        break;
      }
    }
    if (std::string fault = stack_fault(opcode, start, stack); !fault.empty()) return fault;
    if (opcode == '.') return {};
  }
  return "no STOP opcode";
}

}  // namespace trainloop::io
