#include "pickle.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <cstring>
#include <limits>
#include <memory>
#include <unordered_map>
#include <utility>

#include "trainloop/error.h"

namespace trainloop::io {

namespace {

// Python's names of the opcodes (pickletools), protocols 0 to 5.
enum class Opcode : unsigned char {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I',
  BININT = 'J', BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P',
  BINPERSID = 'Q', REDUCE = 'R', STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U',
  UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b', GLOBAL = 'c', DICT = 'd',
  EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i', LONG_BINGET = 'j',
  LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  BINBYTES = 'B', SHORT_BINBYTES = 'C', PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83,
  EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89,
  LONG1 = 0x8a, LONG4 = 0x8b, SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e,
  EMPTY_SET = 0x8f, ADDITEMS = 0x90, FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93,
  MEMOIZE = 0x94, FRAME = 0x95, BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

// How an opcode's argument is laid out.
enum class Argument {
  unknown,     // not an opcode
  none,
  fixed,       // `size` bytes
  counted,     // a `size`-byte little-endian length, then that many bytes
  memo_index,  // a `size`-byte little-endian memo index
  line,        // text up to a newline
  two_lines,   // GLOBAL and INST: module and name, each up to a newline
  text_memo,   // GET and PUT: a decimal memo index up to a newline
};

// What an opcode takes from above the topmost MARK, which it then removes.
enum class Marked { nothing, values, pairs };  // pairs: DICT's and SETITEMS's keys and values

struct OpcodeInfo {
  Opcode opcode{};
  Argument argument = Argument::unknown;
  int size = 0;
  Marked marked = Marked::nothing;
  int pops = 0;  // values beyond the marked ones
  int pushes = 0;
  bool state_dict = false;  // read mode refuses the others
};

constexpr bool kInStateDict = true;
constexpr bool kNotInStateDict = false;

// Every opcode. APPENDS and SETITEMS pop and push again the list or dict
// below their MARK; STOP and MARK are run apart.
constexpr OpcodeInfo kOpcodes[] = {
    // opcode                  argument           size  marked           pops pushes
    {Opcode::MARK,             Argument::none,       0, Marked::nothing, 0, 0, kInStateDict},
    {Opcode::STOP,             Argument::none,       0, Marked::nothing, 0, 0, kInStateDict},
    {Opcode::PROTO,            Argument::fixed,      1, Marked::nothing, 0, 0, kInStateDict},
    {Opcode::FRAME,            Argument::fixed,      8, Marked::nothing, 0, 0, kInStateDict},
    {Opcode::POP,              Argument::none,       0, Marked::nothing, 1, 0, kInStateDict},
    {Opcode::POP_MARK,         Argument::none,       0, Marked::values,  0, 0, kInStateDict},
    {Opcode::DUP,              Argument::none,       0, Marked::nothing, 1, 2, kInStateDict},
    {Opcode::NONE,             Argument::none,       0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::NEWTRUE,          Argument::none,       0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::NEWFALSE,         Argument::none,       0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BININT1,          Argument::fixed,      1, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BININT2,          Argument::fixed,      2, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BININT,           Argument::fixed,      4, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::LONG1,            Argument::counted,    1, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BINFLOAT,         Argument::fixed,      8, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::SHORT_BINSTRING,  Argument::counted,    1, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BINSTRING,        Argument::counted,    4, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::SHORT_BINUNICODE, Argument::counted,    1, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BINUNICODE,       Argument::counted,    4, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BINUNICODE8,      Argument::counted,    8, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::GLOBAL,           Argument::two_lines,  0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::STACK_GLOBAL,     Argument::none,       0, Marked::nothing, 2, 1, kInStateDict},
    {Opcode::EMPTY_TUPLE,      Argument::none,       0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::TUPLE,            Argument::none,       0, Marked::values,  0, 1, kInStateDict},
    {Opcode::TUPLE1,           Argument::none,       0, Marked::nothing, 1, 1, kInStateDict},
    {Opcode::TUPLE2,           Argument::none,       0, Marked::nothing, 2, 1, kInStateDict},
    {Opcode::TUPLE3,           Argument::none,       0, Marked::nothing, 3, 1, kInStateDict},
    {Opcode::EMPTY_LIST,       Argument::none,       0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::LIST,             Argument::none,       0, Marked::values,  0, 1, kInStateDict},
    {Opcode::APPEND,           Argument::none,       0, Marked::nothing, 2, 1, kInStateDict},
    {Opcode::APPENDS,          Argument::none,       0, Marked::values,  1, 1, kInStateDict},
    {Opcode::EMPTY_DICT,       Argument::none,       0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::DICT,             Argument::none,       0, Marked::pairs,   0, 1, kInStateDict},
    {Opcode::SETITEM,          Argument::none,       0, Marked::nothing, 3, 1, kInStateDict},
    {Opcode::SETITEMS,         Argument::none,       0, Marked::pairs,   1, 1, kInStateDict},
    {Opcode::PUT,              Argument::text_memo,  0, Marked::nothing, 1, 1, kInStateDict},
    {Opcode::BINPUT,           Argument::memo_index, 1, Marked::nothing, 1, 1, kInStateDict},
    {Opcode::LONG_BINPUT,      Argument::memo_index, 4, Marked::nothing, 1, 1, kInStateDict},
    {Opcode::MEMOIZE,          Argument::none,       0, Marked::nothing, 1, 1, kInStateDict},
    {Opcode::GET,              Argument::text_memo,  0, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BINGET,           Argument::memo_index, 1, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::LONG_BINGET,      Argument::memo_index, 4, Marked::nothing, 0, 1, kInStateDict},
    {Opcode::BINPERSID,        Argument::none,       0, Marked::nothing, 1, 1, kInStateDict},
    {Opcode::REDUCE,           Argument::none,       0, Marked::nothing, 2, 1, kInStateDict},
    {Opcode::BUILD,            Argument::none,       0, Marked::nothing, 2, 1, kInStateDict},
    {Opcode::INT,              Argument::line,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::LONG,             Argument::line,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::FLOAT,            Argument::line,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::STRING,           Argument::line,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::UNICODE,          Argument::line,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::PERSID,           Argument::line,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::LONG4,            Argument::counted,    4, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::SHORT_BINBYTES,   Argument::counted,    1, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::BINBYTES,         Argument::counted,    4, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::BINBYTES8,        Argument::counted,    8, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::BYTEARRAY8,       Argument::counted,    8, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::EXT1,             Argument::fixed,      1, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::EXT2,             Argument::fixed,      2, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::EXT4,             Argument::fixed,      4, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::EMPTY_SET,        Argument::none,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::ADDITEMS,         Argument::none,       0, Marked::values,  1, 1, kNotInStateDict},
    {Opcode::FROZENSET,        Argument::none,       0, Marked::values,  0, 1, kNotInStateDict},
    {Opcode::INST,             Argument::two_lines,  0, Marked::values,  0, 1, kNotInStateDict},
    {Opcode::OBJ,              Argument::none,       0, Marked::values,  0, 1, kNotInStateDict},
    {Opcode::NEWOBJ,           Argument::none,       0, Marked::nothing, 2, 1, kNotInStateDict},
    {Opcode::NEWOBJ_EX,        Argument::none,       0, Marked::nothing, 3, 1, kNotInStateDict},
    {Opcode::NEXT_BUFFER,      Argument::none,       0, Marked::nothing, 0, 1, kNotInStateDict},
    {Opcode::READONLY_BUFFER,  Argument::none,       0, Marked::nothing, 1, 1, kNotInStateDict},
};

// An unknown opcode's argument is Argument::unknown.
const OpcodeInfo& info_of(unsigned char opcode) {
  static const std::array<OpcodeInfo, 256> table = [] {
    std::array<OpcodeInfo, 256> by_byte{};
    for (const OpcodeInfo& info : kOpcodes) by_byte[static_cast<unsigned char>(info.opcode)] = info;
    return by_byte;
  }();
  return table[opcode];
}

// The storage classes torch pickles, by their names in module torch.
constexpr std::pair<std::string_view, torch::ScalarType> kStorageClasses[] = {
    {"BoolStorage", torch::kBool},       {"ByteStorage", torch::kUInt8},
    {"CharStorage", torch::kInt8},       {"ShortStorage", torch::kInt16},
    {"IntStorage", torch::kInt32},       {"LongStorage", torch::kInt64},
    {"HalfStorage", torch::kHalf},       {"BFloat16Storage", torch::kBFloat16},
    {"FloatStorage", torch::kFloat},     {"DoubleStorage", torch::kDouble},
    {"ComplexHalfStorage", torch::kComplexHalf},
    {"ComplexFloatStorage", torch::kComplexFloat},
    {"ComplexDoubleStorage", torch::kComplexDouble},
    {"QInt8Storage", torch::kQInt8},     {"QUInt8Storage", torch::kQUInt8},
    {"QInt32Storage", torch::kQInt32},   {"QUInt4x2Storage", torch::kQUInt4x2},
    {"QUInt2x4Storage", torch::kQUInt2x4}};

uint64_t little_endian(std::string_view bytes, uint64_t at, int size) {
  uint64_t value = 0;
  for (int i = 0; i < size; ++i) {
    value |= uint64_t{static_cast<unsigned char>(bytes[at + static_cast<uint64_t>(i)])} << (8 * i);
  }
  return value;
}

struct Dict;

// A value on the pickle's stack, as far as either mode needs to tell them
// apart; validate mode follows only what a persistent id is made of. Copies
// share their text, items and dict, as the pickle's memo does, so DUP and GET
// cost no more than in LibTorch.
struct Value {
  enum class Kind {
    other, none, boolean, integer, text, global, tuple, dict, storage, tensor, unusable
  };
  Kind kind = Kind::other;
  int64_t integer = 0;  // an int's, a bool's, a storage's element count
  // A string, a global's "module.name", a storage's key, why a tensor is unusable.
  std::shared_ptr<const std::string> text;
  std::shared_ptr<const std::vector<Value>> items;  // a tuple's
  std::shared_ptr<Dict> dict;                       // filled by SETITEMS wherever it was copied
  torch::ScalarType dtype = torch::kFloat;          // a storage's
  torch::Tensor tensor;
};

struct Dict {
  std::vector<std::pair<std::string, Value>> entries;  // string keys, in insertion order
  std::unordered_map<std::string, size_t> index;
  bool other_keys = false;  // a key that is not a string was set

  void set(const Value& key, Value value) {
    if (key.kind != Value::Kind::text) {
      other_keys = true;
      return;
    }
    const auto [at, inserted] = index.emplace(*key.text, entries.size());
    if (inserted) {
      entries.emplace_back(*key.text, std::move(value));
    } else {
      entries[at->second].second = std::move(value);  // as Python's dict: the last one wins
    }
  }
};

Value make(Value::Kind kind, std::string text) {
  Value value;
  value.kind = kind;
  value.text = std::make_shared<const std::string>(std::move(text));
  return value;
}

Value integer_value(Value::Kind kind, int64_t integer) {
  Value value;
  value.kind = kind;
  value.integer = integer;
  return value;
}

Value tuple_value(std::vector<Value> items) {
  Value value;
  value.kind = Value::Kind::tuple;
  value.items = std::make_shared<const std::vector<Value>>(std::move(items));
  return value;
}

Value dict_value() {
  Value value;
  value.kind = Value::Kind::dict;
  value.dict = std::make_shared<Dict>();
  return value;
}

// LONG1's little-endian two's complement (Python's pickle of an int of
// 2^31 or more), when it fits 64 bits.
Value long_value(std::string_view bytes) {
  if (bytes.empty() || bytes.size() > 8) return {};
  uint64_t value = little_endian(bytes, 0, static_cast<int>(bytes.size()));
  const int bits = static_cast<int>(bytes.size()) * 8;
  if (bits < 64 && (value >> (bits - 1)) != 0) value |= ~uint64_t{0} << bits;
  return integer_value(Value::Kind::integer, static_cast<int64_t>(value));
}

// What a value is, as a message says it: "an int", "None".
const char* kind_phrase(Value::Kind kind) {
  switch (kind) {
    case Value::Kind::none: return "None";
    case Value::Kind::boolean: return "a bool";
    case Value::Kind::integer: return "an int";
    case Value::Kind::text: return "a string";
    case Value::Kind::global: return "a class or function";
    case Value::Kind::tuple: return "a tuple";
    case Value::Kind::dict: return "a dict";
    case Value::Kind::storage: return "a storage";
    case Value::Kind::tensor: return "a tensor";
    case Value::Kind::unusable: return "a tensor";
    case Value::Kind::other: break;
  }
  return "a value of another type";
}

std::optional<std::vector<int64_t>> integers(const Value& value) {
  if (value.kind != Value::Kind::tuple) return std::nullopt;
  std::vector<int64_t> out;
  for (const Value& item : *value.items) {
    if (item.kind != Value::Kind::integer) return std::nullopt;
    out.push_back(item.integer);
  }
  return out;
}

// Why a view of `count` elements from `offset` with these sizes and strides
// does not lie inside a storage of `capacity` elements; empty when it does.
std::string view_fault(int64_t capacity, int64_t offset, const std::vector<int64_t>& sizes,
                       const std::vector<int64_t>& strides) {
  const auto describe = [&] {
    return fmt::format("offset {}, shape [{}], strides [{}]; its storage holds {} elements", offset,
                       fmt::join(sizes, ", "), fmt::join(strides, ", "), capacity);
  };
  int64_t numel = 1;
  for (const int64_t size : sizes) {
    if (size < 0 || (size > 0 && numel > std::numeric_limits<int64_t>::max() / size)) {
      return "has an impossible shape (" + describe() + ")";
    }
    numel *= size;
  }
  if (numel == 0) return {};
  if (offset < 0 || offset >= capacity) return "starts outside its storage (" + describe() + ")";
  int64_t last = offset;
  for (size_t dim = 0; dim < sizes.size(); ++dim) {
    const int64_t steps = sizes[dim] - 1;
    // Each term stays below capacity, so the sum cannot overflow.
    if (strides[dim] < 0 || (steps > 0 && strides[dim] > (capacity - 1 - last) / steps)) {
      return "reaches outside its storage (" + describe() + ")";
    }
    last += steps * strides[dim];
  }
  return {};
}

// The pickle machine. Both modes check every stack depth, MARK, memo entry
// and persistent id: LibTorch 1.13's unpickler pops without checking, so a
// REDUCE or TUPLE3 on too short a stack frees memory it does not own (found
// by fuzz/weights_fuzzer). Read mode also builds dicts, calls torch's
// rebuilders and reads the storages from the archive.
class Machine {
 public:
  // Validate mode; the storages the pickle names go to `claims` when given.
  explicit Machine(std::vector<StorageClaim>* claims) : claims_(claims) {}

  // Read mode; storages are read from `records` under `folder`.
  Machine(std::string folder, const std::map<std::string, ZipEntry>& records)
      : mode_(Mode::read), folder_(std::move(folder)), records_(&records) {}

  // The first fault of running `op`.
  std::string step(const PickleOp& op) {
    const Opcode opcode = static_cast<Opcode>(op.opcode);
    const OpcodeInfo& info = info_of(op.opcode);
    if (mode_ == Mode::read && !info.state_dict) {
      return fmt::format("opcode 0x{:02x} at byte {} has no place in a state dict", op.opcode,
                         op.at);
    }
    if (opcode == Opcode::MARK) {
      marks_.push_back(values_.size());
      return {};
    }
    if (opcode == Opcode::STOP) {
      if (!marks_.empty() || values_.size() != 1) {
        return fmt::format("STOP at byte {} leaves {} values and {} MARKs, expected 1 value",
                           op.at, values_.size(), marks_.size());
      }
      return {};
    }
    std::vector<Value> marked;
    if (info.marked != Marked::nothing) {
      if (marks_.empty()) {
        return fmt::format("opcode 0x{:02x} at byte {} has no MARK before it", op.opcode, op.at);
      }
      if (info.marked == Marked::pairs && above_mark() % 2 != 0) {
        return fmt::format("opcode 0x{:02x} at byte {} pairs keys with values, but {} remain",
                           op.opcode, op.at, above_mark());
      }
      marked = take(marks_.back());
      marks_.pop_back();
    }
    if (above_mark() < static_cast<size_t>(info.pops)) {
      return fmt::format("opcode 0x{:02x} at byte {} needs {} values on the stack, found {}",
                         op.opcode, op.at, info.pops, above_mark());
    }
    std::vector<Value> popped = take(values_.size() - static_cast<size_t>(info.pops));
    Value pushed;
    std::string fault = follow(op, marked, popped, pushed);
    if (fault.empty() && mode_ == Mode::read) fault = build(op, marked, popped, pushed);
    if (!fault.empty()) return fault;
    if (info.pushes > 0) values_.push_back(std::move(pushed));
    return {};
  }

  // The value STOP found alone on the stack.
  const Value& result() const { return values_.back(); }

 private:
  enum class Mode { validate, read };

  // Storage keys and class names are short; validate mode need not keep
  // longer strings.
  static constexpr size_t kLongestText = 256;

  // Values above the topmost MARK: all an opcode other than a MARK's
  // consumer may pop, as in Python's unpickler.
  size_t above_mark() const { return values_.size() - (marks_.empty() ? 0 : marks_.back()); }

  // Removes the values from `first` up, and returns them.
  std::vector<Value> take(size_t first) {
    const auto from = values_.begin() + static_cast<std::ptrdiff_t>(first);
    std::vector<Value> taken(std::make_move_iterator(from), std::make_move_iterator(values_.end()));
    values_.erase(from, values_.end());
    return taken;
  }

  // What `op` pushes, as both modes follow it: numbers, strings, globals,
  // tuples, the memo and persistent ids. `marked` holds the values it took
  // from above its MARK, `popped` the others, deepest first.
  std::string follow(const PickleOp& op, std::vector<Value>& marked, std::vector<Value>& popped,
                     Value& pushed) {
    switch (static_cast<Opcode>(op.opcode)) {
      case Opcode::BININT1: case Opcode::BININT2:
        pushed = integer_value(Value::Kind::integer, static_cast<int64_t>(op.number));
        break;
      case Opcode::BININT:
        pushed = integer_value(Value::Kind::integer,
                               static_cast<int32_t>(static_cast<uint32_t>(op.number)));
        break;
      case Opcode::LONG1: pushed = long_value(op.bytes); break;
      case Opcode::NONE: pushed.kind = Value::Kind::none; break;
      case Opcode::NEWTRUE: case Opcode::NEWFALSE:
        pushed = integer_value(Value::Kind::boolean,
                               static_cast<Opcode>(op.opcode) == Opcode::NEWTRUE);
        break;
      case Opcode::BINUNICODE: case Opcode::SHORT_BINUNICODE: case Opcode::BINUNICODE8:
      case Opcode::SHORT_BINSTRING: case Opcode::BINSTRING:
        if (mode_ == Mode::read || op.bytes.size() <= kLongestText) {
          pushed = make(Value::Kind::text, std::string(op.bytes));
        }
        break;
      case Opcode::GLOBAL:
        pushed = make(Value::Kind::global, fmt::format("{}.{}", op.bytes, op.second));
        break;
      case Opcode::STACK_GLOBAL:
        if (popped[0].kind == Value::Kind::text && popped[1].kind == Value::Kind::text) {
          pushed = make(Value::Kind::global, *popped[0].text + "." + *popped[1].text);
        }
        break;
      case Opcode::EMPTY_TUPLE: pushed = tuple_value({}); break;
      case Opcode::TUPLE: pushed = tuple_value(std::move(marked)); break;
      case Opcode::TUPLE1: case Opcode::TUPLE2: case Opcode::TUPLE3:
        pushed = tuple_value(std::move(popped));
        break;
      case Opcode::PUT: case Opcode::BINPUT: case Opcode::LONG_BINPUT: case Opcode::MEMOIZE: {
        const bool next = static_cast<Opcode>(op.opcode) == Opcode::MEMOIZE;
        memo_[next ? memoized_++ : op.number] = popped[0];
        pushed = std::move(popped[0]);
        break;
      }
      case Opcode::GET: case Opcode::BINGET: case Opcode::LONG_BINGET: {
        const auto found = memo_.find(op.number);
        if (found == memo_.end()) {
          return fmt::format("opcode 0x{:02x} at byte {} reads memo {}, which nothing stored",
                             op.opcode, op.at, op.number);
        }
        pushed = found->second;
        break;
      }
      case Opcode::DUP:
        values_.push_back(popped[0]);
        pushed = std::move(popped[0]);
        break;
      case Opcode::BINPERSID: return persistent_storage(popped[0], op.at, pushed);
      default: break;
    }
    return {};
  }

  // What read mode adds to `follow`: dicts, the values APPEND, SETITEM and
  // BUILD change in place, and calls.
  std::string build(const PickleOp& op, std::vector<Value>& marked, std::vector<Value>& popped,
                    Value& pushed) {
    switch (static_cast<Opcode>(op.opcode)) {
      case Opcode::STACK_GLOBAL:
        if (pushed.kind != Value::Kind::global) {
          return fmt::format("STACK_GLOBAL at byte {} is not given two strings", op.at);
        }
        return {};
      case Opcode::EMPTY_DICT: pushed = dict_value(); return {};
      case Opcode::DICT:
        pushed = dict_value();
        return fill(pushed, marked.begin(), marked.end(), op.at);
      case Opcode::SETITEMS:
        pushed = std::move(popped[0]);
        return fill(pushed, marked.begin(), marked.end(), op.at);
      case Opcode::SETITEM:
        pushed = std::move(popped[0]);
        return fill(pushed, popped.begin() + 1, popped.end(), op.at);
      case Opcode::APPEND: case Opcode::APPENDS: pushed = std::move(popped[0]); return {};
      case Opcode::BUILD: {
        // popped[1] is the state; an OrderedDict's (its _metadata) does not matter.
        const Value::Kind kind = popped[0].kind;
        if (kind != Value::Kind::dict && kind != Value::Kind::tensor &&
            kind != Value::Kind::unusable) {
          return fmt::format("BUILD at byte {} sets the state of {}", op.at, kind_phrase(kind));
        }
        pushed = std::move(popped[0]);
        return {};
      }
      case Opcode::REDUCE: return call(popped[0], popped[1], op.at, pushed);
      default: return {};
    }
  }

  static std::string fill(Value& target, std::vector<Value>::const_iterator first,
                          std::vector<Value>::const_iterator last, uint64_t at) {
    if (target.kind != Value::Kind::dict) {
      return fmt::format("SETITEM at byte {} sets items of {}", at, kind_phrase(target.kind));
    }
    for (; first != last && first + 1 != last; first += 2) target.dict->set(*first, *(first + 1));
    return {};
  }

  // A persistent id, ("storage", torch.<Type>Storage, key, location, count),
  // as a storage value.
  std::string persistent_storage(const Value& id, uint64_t at, Value& storage) {
    const auto malformed = [&] {
      return fmt::format("persistent id at byte {} is not (\"storage\", torch.<Type>Storage, key, "
                         "location, element count)",
                         at);
    };
    if (id.kind != Value::Kind::tuple || id.items->size() != 5) return malformed();
    const std::vector<Value>& items = *id.items;
    if (items[0].kind != Value::Kind::text || *items[0].text != "storage" ||
        items[1].kind != Value::Kind::global || items[2].kind != Value::Kind::text ||
        items[3].kind != Value::Kind::text || items[4].kind != Value::Kind::integer) {
      return malformed();
    }
    const std::string& storage_class = *items[1].text;
    const std::string_view prefix = "torch.";
    const auto type = storage_class.compare(0, prefix.size(), prefix) == 0
                          ? storage_scalar_type(std::string_view(storage_class).substr(prefix.size()))
                          : std::nullopt;
    if (!type) {
      return fmt::format("persistent id at byte {} names {}, not a torch storage class", at,
                         storage_class);
    }
    const uint64_t element = c10::elementSize(*type);
    const int64_t count = items[4].integer;
    // 2^56 bytes is far beyond any machine; the bound keeps the product exact.
    if (count < 0 || static_cast<uint64_t>(count) > (uint64_t{1} << 56) / element) {
      return fmt::format("storage \"{}\" at byte {} claims {} elements", *items[2].text, at,
                         count);
    }
    if (claims_ != nullptr) {
      claims_->push_back({*items[2].text, static_cast<uint64_t>(count) * element, at});
    }
    storage = make(Value::Kind::storage, *items[2].text);
    storage.dtype = *type;
    storage.integer = count;
    return {};
  }

  // The storage's elements, read from its record once however many tensors
  // view it.
  std::string storage_data(const Value& storage, torch::Tensor& data) {
    const std::string& key = *storage.text;
    if (const auto found = storages_.find(key); found != storages_.end()) {
      data = found->second;
      return {};
    }
    const std::string record = folder_ + folded_case(key);
    const auto entry = records_->find(record);
    const uint64_t bytes =
        static_cast<uint64_t>(storage.integer) * c10::elementSize(storage.dtype);
    if (bytes > 0 && entry == records_->end()) {
      return fmt::format("storage \"{}\" has no record {}", key, record);
    }
    if (bytes > 0 && (!entry->second.stored || entry->second.data.size() < bytes)) {
      return fmt::format("{} is {}, where storage \"{}\" needs {} bytes stored", record,
                         entry->second.stored ? "shorter" : "deflated", key, bytes);
    }
    // Bools are read as bytes: any byte but 0 is true, as in torch.
    const torch::ScalarType read_as = storage.dtype == torch::kBool ? torch::kUInt8 : storage.dtype;
    data = torch::empty({storage.integer}, torch::TensorOptions().dtype(read_as));
    if (bytes > 0) std::memcpy(data.data_ptr(), entry->second.data.data(), bytes);
    if (storage.dtype == torch::kBool) data = data.ne(0);
    storages_.emplace(key, data);
    return {};
  }

  // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...).
  std::string rebuild_tensor(const std::vector<Value>& arguments, uint64_t at, Value& result) {
    const auto sizes = arguments.size() >= 4 ? integers(arguments[2]) : std::nullopt;
    const auto strides = arguments.size() >= 4 ? integers(arguments[3]) : std::nullopt;
    if (!sizes || !strides || sizes->size() != strides->size() ||
        arguments[0].kind != Value::Kind::storage || arguments[1].kind != Value::Kind::integer) {
      return fmt::format("the tensor at byte {} is not rebuilt from (storage, offset, shape, "
                         "strides)",
                         at);
    }
    const Value& storage = arguments[0];
    if (c10::isQIntType(storage.dtype)) {
      result = make(Value::Kind::unusable, fmt::format("is a quantized {} tensor, expected a "
                                                       "dense one",
                                                       c10::toString(storage.dtype)));
      return {};
    }
    const std::string fault = view_fault(storage.integer, arguments[1].integer, *sizes, *strides);
    if (!fault.empty()) {
      result = make(Value::Kind::unusable, fault);
      return {};
    }
    result = make(Value::Kind::tensor, {});
    if (c10::multiply_integers(*sizes) == 0) {
      // No element is read: the offset and strides of an empty view do not matter.
      result.tensor = torch::empty(*sizes, torch::TensorOptions().dtype(storage.dtype));
      return {};
    }
    torch::Tensor data;
    if (std::string missing = storage_data(storage, data); !missing.empty()) return missing;
    try {
      result.tensor = data.as_strided(*sizes, *strides, arguments[1].integer);
    } catch (const c10::Error& e) {
      result = make(Value::Kind::unusable, fmt::format("cannot be viewed in its storage: {}",
                                                       e.what_without_backtrace()));
    }
    return {};
  }

  std::string call(const Value& callable, const Value& arguments, uint64_t at, Value& result) {
    if (callable.kind != Value::Kind::global) {
      return fmt::format("REDUCE at byte {} calls {}, not a function", at,
                         kind_phrase(callable.kind));
    }
    const std::string& name = *callable.text;
    if (arguments.kind != Value::Kind::tuple) {
      return fmt::format("REDUCE at byte {} calls {} with {}, expected a tuple of arguments", at,
                         name, kind_phrase(arguments.kind));
    }
    const std::vector<Value>& items = *arguments.items;
    if (name == "collections.OrderedDict" && items.empty()) {
      result = dict_value();
      return {};
    }
    // torch::pickle_save tags a dict with its type: restore_type_tag(dict, "Dict[str, Tensor]").
    if (name == "torch.jit._pickle.restore_type_tag" && !items.empty() &&
        items[0].kind == Value::Kind::dict) {
      result = items[0];
      return {};
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      return rebuild_tensor(items, at, result);
    }
    // A Parameter is its tensor; requires_grad and hooks do not matter here.
    if ((name == "torch._utils._rebuild_parameter" ||
         name == "torch._utils._rebuild_parameter_with_state") &&
        !items.empty() &&
        (items[0].kind == Value::Kind::tensor || items[0].kind == Value::Kind::unusable)) {
      result = items[0];
      return {};
    }
    if (name == "torch._utils._rebuild_qtensor") {
      const std::string type = !items.empty() && items[0].kind == Value::Kind::storage
                                   ? c10::toString(items[0].dtype)
                                   : "";
      result = make(Value::Kind::unusable,
                    fmt::format("is a quantized {} tensor, expected a dense one", type));
      return {};
    }
    if (name.rfind("torch._utils._rebuild_sparse", 0) == 0) {
      result = make(Value::Kind::unusable, "is a sparse tensor, expected a dense one");
      return {};
    }
    return fmt::format("calls {} at byte {}, which a state dict has no use for", name, at);
  }

  Mode mode_ = Mode::validate;
  std::vector<Value> values_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  uint64_t memoized_ = 0;
  std::vector<StorageClaim>* claims_ = nullptr;
  // Read mode's.
  std::string folder_;
  const std::map<std::string, ZipEntry>* records_ = nullptr;
  std::map<std::string, torch::Tensor> storages_;
};

}  // namespace

std::string walk_pickle(std::string_view pickle,
                        const std::function<std::string(const PickleOp&)>& visit) {
  const uint64_t size = pickle.size();
  uint64_t at = 0;
  while (at < size) {
    const auto opcode = static_cast<unsigned char>(pickle[at]);
    const uint64_t start = at++;
    const OpcodeInfo& info = info_of(opcode);
    const uint64_t remaining = size - at;
    PickleOp op;
    op.opcode = opcode;
    op.at = start;
    switch (info.argument) {
      case Argument::unknown:
        return fmt::format("unknown opcode 0x{:02x} at byte {}", opcode, start);
      case Argument::none:
        break;
      case Argument::fixed:
        if (remaining < static_cast<uint64_t>(info.size)) {
          return fmt::format("opcode 0x{:02x} at byte {} is cut short", opcode, start);
        }
        op.bytes = pickle.substr(at, static_cast<size_t>(info.size));
        op.number = little_endian(pickle, at, info.size);
        at += static_cast<uint64_t>(info.size);
        break;
      case Argument::counted:
      case Argument::memo_index: {
        if (remaining < static_cast<uint64_t>(info.size)) {
          return fmt::format("opcode 0x{:02x} at byte {} is cut short", opcode, start);
        }
        const uint64_t value = little_endian(pickle, at, info.size);
        at += static_cast<uint64_t>(info.size);
        if (info.argument == Argument::memo_index) {
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
        const int lines = info.argument == Argument::two_lines ? 2 : 1;
        for (int line = 0; line < lines; ++line) {
          const size_t newline = pickle.find('\n', at);
          if (newline == std::string_view::npos) {
            return fmt::format("opcode 0x{:02x} at byte {} has no end of line", opcode, start);
          }
          const std::string_view text = pickle.substr(at, newline - at);
          (line == 0 ? op.bytes : op.second) = text;
          if (info.argument == Argument::text_memo) {
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
    if (static_cast<Opcode>(opcode) == Opcode::STOP) return {};
  }
  return "no STOP opcode";
}

std::string pickle_fault(std::string_view pickle, std::vector<StorageClaim>* claims) {
  Machine machine(claims);
  return walk_pickle(pickle, [&](const PickleOp& op) { return machine.step(op); });
}

std::vector<StateEntry> read_state_dict_pickle(const ZipEntry& pickle,
                                               const std::map<std::string, ZipEntry>& records) {
  // torch.save's layout: <name>/data.pkl, its storages in <name>/data/.
  const std::string name = folded_case(pickle.name);
  Machine machine(name.substr(0, name.size() - 4) + "/", records);
  const std::string fault =
      walk_pickle(pickle.data, [&](const PickleOp& op) { return machine.step(op); });
  if (!fault.empty()) throw Error(fmt::format("{}: {}", pickle.name, fault));
  const Value& root = machine.result();
  if (root.kind != Value::Kind::dict) {
    throw Error(fmt::format("holds {}, expected a dict of tensors", kind_phrase(root.kind)));
  }
  if (root.dict->other_keys) throw Error("holds a dict whose keys are not all strings");
  std::vector<StateEntry> state;
  for (const auto& [key, value] : root.dict->entries) {
    StateEntry entry{key, value.tensor, {}};
    if (value.kind == Value::Kind::unusable) {
      entry.problem = *value.text;
    } else if (value.kind != Value::Kind::tensor) {
      entry.problem = fmt::format("is {}, expected a tensor", kind_phrase(value.kind));
    }
    state.push_back(std::move(entry));
  }
  return state;
}

std::optional<torch::ScalarType> storage_scalar_type(std::string_view storage_class) {
  for (const auto& [name, type] : kStorageClasses) {
    if (name == storage_class) return type;
  }
  return std::nullopt;
}

const char* storage_class_name(torch::ScalarType type) {
  for (const auto& [name, storage_type] : kStorageClasses) {
    if (storage_type == type) return name.data();
  }
  return nullptr;
}

}  // namespace trainloop::io
