#include "pickle_check.h"

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>
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

uint64_t little_endian(std::string_view bytes, uint64_t at, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) {
    value |= uint64_t{static_cast<unsigned char>(bytes[at + static_cast<uint64_t>(i)])} << (8 * i);
  }
  return value;
}

// What the walk knows of a value on the pickle's stack: enough to read a
// persistent id, ("storage", torch.<Type>Storage, key, location, count).
// Copies share their text and items, so DUP and GET cost no more than in
// LibTorch.
struct Value {
  enum class Kind { other, text, integer, global, tuple };
  Kind kind = Kind::other;
  int64_t integer = 0;
  std::shared_ptr<const std::string> text;  // a string's, or a global's "module.name"
  std::shared_ptr<const std::vector<Value>> items;  // a tuple's
};

Value text_value(Value::Kind kind, std::string text) {
  Value value;
  value.kind = kind;
  value.text = std::make_shared<const std::string>(std::move(text));
  return value;
}

Value integer_value(int64_t integer) {
  Value value;
  value.kind = Value::Kind::integer;
  value.integer = integer;
  return value;
}

Value tuple_value(std::vector<Value> items) {
  Value value;
  value.kind = Value::Kind::tuple;
  value.items = std::make_shared<const std::vector<Value>>(std::move(items));
  return value;
}

bool is_text(const Value& value, Value::Kind kind) { return value.kind == kind && value.text; }

// Bytes per element of the storage classes torch pickles; 0 for others.
uint64_t element_bytes(std::string_view storage_class) {
  static const std::map<std::string_view, uint64_t> sizes = {
      {"torch.BoolStorage", 1},     {"torch.ByteStorage", 1},        {"torch.CharStorage", 1},
      {"torch.QInt8Storage", 1},    {"torch.QUInt8Storage", 1},      {"torch.QUInt4x2Storage", 1},
      {"torch.QUInt2x4Storage", 1}, {"torch.ShortStorage", 2},       {"torch.HalfStorage", 2},
      {"torch.BFloat16Storage", 2}, {"torch.IntStorage", 4},         {"torch.FloatStorage", 4},
      {"torch.QInt32Storage", 4},   {"torch.ComplexHalfStorage", 4}, {"torch.LongStorage", 8},
      {"torch.DoubleStorage", 8},   {"torch.ComplexFloatStorage", 8},
      {"torch.ComplexDoubleStorage", 16}};
  const auto found = sizes.find(storage_class);
  return found == sizes.end() ? 0 : found->second;
}

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
    case 'e': case 0x90: return {true, 1, 1};  // the list or set below the MARK stays
    case 'u': return {true, 1, 1, true};       // so does the dict
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

// The pickle machine as far as the walk follows it. LibTorch 1.13's
// unpickler pops without checking, so a REDUCE or TUPLE3 on too short a stack
// frees memory it does not own (found by fuzz/weights_fuzzer).
class Machine {
 public:
  explicit Machine(std::vector<StorageClaim>* claims) : claims_(claims) {}

  // The first fault of running `opcode` (at byte `start`).
  std::string step(const PickleOp& op) {
    const unsigned char opcode = op.opcode;
    const uint64_t start = op.at;
    if (opcode == '(') {
      marks_.push_back(values_.size());
      return {};
    }
    if (opcode == '.') {
      if (!marks_.empty() || values_.size() != 1) {
        return fmt::format("STOP at byte {} leaves {} values and {} MARKs, expected 1 value",
                           start, values_.size(), marks_.size());
      }
      return {};
    }
    const StackEffect effect = stack_effect_of(opcode);
    std::vector<Value> marked;
    if (effect.consumes_mark) {
      if (marks_.empty()) {
        return fmt::format("opcode 0x{:02x} at byte {} has no MARK before it", opcode, start);
      }
      if (effect.pairs && above_mark() % 2 != 0) {
        return fmt::format("opcode 0x{:02x} at byte {} pairs keys with values, but {} remain",
                           opcode, start, above_mark());
      }
      const auto first = values_.begin() + static_cast<std::ptrdiff_t>(marks_.back());
      marked.assign(std::make_move_iterator(first), std::make_move_iterator(values_.end()));
      values_.erase(first, values_.end());
      marks_.pop_back();
    }
    if (above_mark() < static_cast<size_t>(effect.pops)) {
      return fmt::format("opcode 0x{:02x} at byte {} needs {} values on the stack, found {}",
                         opcode, start, effect.pops, above_mark());
    }
    const auto popped_from = values_.end() - effect.pops;
    std::vector<Value> popped(std::make_move_iterator(popped_from),
                              std::make_move_iterator(values_.end()));
    values_.erase(popped_from, values_.end());
    Value pushed;
    switch (opcode) {
      case 'K': case 'M': pushed = integer_value(static_cast<int64_t>(op.number)); break;
      case 'J':
        pushed = integer_value(static_cast<int32_t>(static_cast<uint32_t>(op.number)));
        break;
      case 0x8a: pushed = long_value(op.bytes); break;
      case 'X': case 0x8c: case 0x8d: case 'U': case 'T':
        if (op.bytes.size() <= kLongestText) {
          pushed = text_value(Value::Kind::text, std::string(op.bytes));
        }
        break;
      case 'c':
        pushed = text_value(Value::Kind::global,
                            fmt::format("{}.{}", op.bytes, op.second));
        break;
      case 0x93:
        if (is_text(popped[0], Value::Kind::text) && is_text(popped[1], Value::Kind::text)) {
          pushed = text_value(Value::Kind::global,
                              fmt::format("{}.{}", *popped[0].text, *popped[1].text));
        }
        break;
      case ')': pushed = tuple_value({}); break;
      case 't': pushed = tuple_value(std::move(marked)); break;
      case 0x85: case 0x86: case 0x87: pushed = tuple_value(std::move(popped)); break;
      case 'p': case 'q': case 'r': case 0x94: {
        const uint64_t index = opcode == 0x94 ? memoized_++ : op.number;
        memo_[index] = popped[0];
        pushed = std::move(popped[0]);
        break;
      }
      case 'g': case 'h': case 'j': {
        const auto found = memo_.find(op.number);
        if (found == memo_.end()) {
          return fmt::format("opcode 0x{:02x} at byte {} reads memo {}, which nothing stored",
                             opcode, start, op.number);
        }
        pushed = found->second;
        break;
      }
      case '2':
        values_.push_back(popped[0]);
        pushed = std::move(popped[0]);
        break;
      case 'Q':
        if (std::string fault = claim_storage(popped[0], start); !fault.empty()) return fault;
        break;
      default: break;
    }
    if (effect.pushes > 0) values_.push_back(std::move(pushed));
    return {};
  }

 private:
  // Storage keys and class names are short; longer strings need not be kept.
  static constexpr size_t kLongestText = 256;

  // Values above the topmost MARK: all an opcode other than a MARK's
  // consumer may pop, as in Python's unpickler.
  size_t above_mark() const { return values_.size() - (marks_.empty() ? 0 : marks_.back()); }

  // LONG1's little-endian two's complement, when it fits 64 bits.
  static Value long_value(std::string_view bytes) {
    if (bytes.empty() || bytes.size() > 8) return {};
    uint64_t value = little_endian(bytes, 0, static_cast<int>(bytes.size()));
    const int bits = static_cast<int>(bytes.size()) * 8;
    if (bits < 64 && (value >> (bits - 1)) != 0) value |= ~uint64_t{0} << bits;
    return integer_value(static_cast<int64_t>(value));
  }

  std::string claim_storage(const Value& id, uint64_t start) {
    const auto malformed = [&] {
      return fmt::format("persistent id at byte {} is not (\"storage\", torch.<Type>Storage, key, "
                         "location, element count)",
                         start);
    };
    if (id.kind != Value::Kind::tuple || id.items->size() != 5) return malformed();
    const std::vector<Value>& items = *id.items;
    if (!is_text(items[0], Value::Kind::text) || *items[0].text != "storage" ||
        !is_text(items[1], Value::Kind::global) || !is_text(items[2], Value::Kind::text) ||
        !is_text(items[3], Value::Kind::text) || items[4].kind != Value::Kind::integer) {
      return malformed();
    }
    const uint64_t element = element_bytes(*items[1].text);
    if (element == 0) {
      return fmt::format("persistent id at byte {} names {}, not a torch storage class", start,
                         *items[1].text);
    }
    const int64_t count = items[4].integer;
    // 2^56 bytes is far beyond any machine; the bound keeps the product exact.
    if (count < 0 || static_cast<uint64_t>(count) > (uint64_t{1} << 56) / element) {
      return fmt::format("storage \"{}\" at byte {} claims {} elements", *items[2].text, start,
                         count);
    }
    if (claims_ != nullptr) {
      claims_->push_back({*items[2].text, static_cast<uint64_t>(count) * element, start});
    }
    return {};
  }

  std::vector<Value> values_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  uint64_t memoized_ = 0;
  std::vector<StorageClaim>* claims_;
};

}  // namespace

std::string walk_pickle(std::string_view pickle,
                        const std::function<std::string(const PickleOp&)>& visit) {
  const uint64_t size = pickle.size();
  uint64_t at = 0;
  while (at < size) {
    const auto opcode = static_cast<unsigned char>(pickle[at]);
    const uint64_t start = at++;
    const Layout layout = layout_of(opcode);
    const uint64_t remaining = size - at;
    PickleOp op;
    op.opcode = opcode;
    op.at = start;
    switch (layout.argument) {
      case Argument::unknown:
        return fmt::format("unknown opcode 0x{:02x} at byte {}", opcode, start);
      case Argument::none:
        break;
      case Argument::fixed:
        if (remaining < static_cast<uint64_t>(layout.size)) {
          return fmt::format("opcode 0x{:02x} at byte {} is cut short", opcode, start);
        }
        op.bytes = pickle.substr(at, static_cast<size_t>(layout.size));
        op.number = little_endian(pickle, at, layout.size);
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
          op.number = value;
        } else {
          if (value > size - at) {
            return fmt::format("a string of {} bytes at byte {}, where {} remain", value, start,
                               size - at);
          }
          op.bytes = pickle.substr(at, static_cast<size_t>(value));
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
          const std::string_view text = pickle.substr(at, newline - at);
          (line == 0 ? op.bytes : op.second) = text;
          if (layout.argument == Argument::text_memo) {
            uint64_t index = 0;
            for (const char digit : text) {
              if (digit < '0' || digit > '9' || index >= size) {
                return fmt::format("memo index at byte {} is not a number below {}", start, size);
              }
              index = index * 10 + static_cast<uint64_t>(digit - '0');
            }
            if (index >= size) {
              return fmt::format("memo index at byte {} is not a number below {}", start, size);
            }
            op.number = index;
          }
          at = newline + 1;
        }
        break;
      }
    }
    if (std::string fault = visit(op); !fault.empty()) return fault;
    if (opcode == '.') return {};
  }
  return "no STOP opcode";
}

std::string pickle_fault(std::string_view pickle, std::vector<StorageClaim>* claims) {
  Machine machine(claims);
  return walk_pickle(pickle, [&](const PickleOp& op) { return machine.step(op); });
}

}  // namespace trainloop::io
