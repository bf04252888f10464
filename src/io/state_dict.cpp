#include "state_dict.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>

#include "pickle_check.h"
#include "trainloop/error.h"
#include "zip_check.h"

namespace trainloop::io {

namespace {

struct Dict;

// A value on the pickle's stack, as far as a state dict needs to tell them
// apart. Copies share their text, items and dict, as the pickle's memo does.
struct Value {
  enum class Kind {
    other, none, boolean, integer, text, global, tuple, dict, storage, tensor, unusable
  };
  Kind kind = Kind::other;
  int64_t integer = 0;                              // an integer's, a storage's element count
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

Value make(Value::Kind kind, std::string text = {}) {
  Value value;
  value.kind = kind;
  value.text = std::make_shared<const std::string>(std::move(text));
  return value;
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

// The storage classes torch pickles and the element types they hold.
std::optional<torch::ScalarType> storage_type(std::string_view storage_class) {
  static const std::map<std::string_view, torch::ScalarType> types = {
      {"torch.BoolStorage", torch::kBool},       {"torch.ByteStorage", torch::kUInt8},
      {"torch.CharStorage", torch::kInt8},       {"torch.ShortStorage", torch::kInt16},
      {"torch.IntStorage", torch::kInt32},       {"torch.LongStorage", torch::kInt64},
      {"torch.HalfStorage", torch::kHalf},       {"torch.BFloat16Storage", torch::kBFloat16},
      {"torch.FloatStorage", torch::kFloat},     {"torch.DoubleStorage", torch::kDouble},
      {"torch.ComplexHalfStorage", torch::kComplexHalf},
      {"torch.ComplexFloatStorage", torch::kComplexFloat},
      {"torch.ComplexDoubleStorage", torch::kComplexDouble},
      {"torch.QInt8Storage", torch::kQInt8},     {"torch.QUInt8Storage", torch::kQUInt8},
      {"torch.QInt32Storage", torch::kQInt32},   {"torch.QUInt4x2Storage", torch::kQUInt4x2},
      {"torch.QUInt2x4Storage", torch::kQUInt2x4}};
  const auto found = types.find(storage_class);
  if (found == types.end()) return std::nullopt;
  return found->second;
}

bool is_quantized(torch::ScalarType type) {
  return type == torch::kQInt8 || type == torch::kQUInt8 || type == torch::kQInt32 ||
         type == torch::kQUInt4x2 || type == torch::kQUInt2x4;
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

// Runs a state dict's pickle. pickle_fault has passed it, so stack depths,
// MARKs, memo entries and persistent ids are known to be well formed.
class Reader {
 public:
  Reader(std::string folder, const std::map<std::string, ZipEntry>& records)
      : folder_(std::move(folder)), records_(records) {}

  std::string step(const PickleOp& op) {
    switch (op.opcode) {
      case 0x80: case 0x95: case '.': return {};  // PROTO, FRAME, STOP
      case '(': marks_.push_back(stack_.size()); return {};
      case '}': push(dict()); return {};
      case ')': push(tuple({})); return {};
      case ']': push(Value{}); return {};
      case 'N': push(make(Value::Kind::none)); return {};
      case 0x88: case 0x89: {
        Value value = make(Value::Kind::boolean);
        value.integer = op.opcode == 0x88;
        push(std::move(value));
        return {};
      }
      case 'K': case 'M': push(integer(static_cast<int64_t>(op.number))); return {};
      case 'J': push(integer(static_cast<int32_t>(static_cast<uint32_t>(op.number)))); return {};
      case 0x8a: push(long1(op.bytes)); return {};
      case 'X': case 0x8c: case 0x8d: case 'U': case 'T':
        push(make(Value::Kind::text, std::string(op.bytes)));
        return {};
      case 'c':
        push(make(Value::Kind::global, fmt::format("{}.{}", op.bytes, op.second)));
        return {};
      case 0x93: {
        const Value name = pop();
        const Value module = pop();
        if (module.kind != Value::Kind::text || name.kind != Value::Kind::text) {
          return fmt::format("STACK_GLOBAL at byte {} is not given two strings", op.at);
        }
        push(make(Value::Kind::global, *module.text + "." + *name.text));
        return {};
      }
      case 'p': case 'q': case 'r': memo_[op.number] = top(); return {};
      case 0x94: memo_[memoized_++] = top(); return {};
      case 'g': case 'h': case 'j': {
        const auto found = memo_.find(op.number);
        if (found == memo_.end()) {
          return fmt::format("memo {} at byte {} was never stored", op.number, op.at);
        }
        push(found->second);
        return {};
      }
      case 't': push(tuple(pop_to_mark())); return {};
      case 0x85: case 0x86: case 0x87: {
        std::vector<Value> items(static_cast<size_t>(op.opcode - 0x84));
        for (auto item = items.rbegin(); item != items.rend(); ++item) *item = pop();
        push(tuple(std::move(items)));
        return {};
      }
      case 'l': pop_to_mark(); push(Value{}); return {};
      case 'e': pop_to_mark(); return {};
      case 'a': pop(); return {};
      case 'd': {
        Value made = dict();
        if (std::string fault = fill(made, pop_to_mark(), op.at); !fault.empty()) return fault;
        push(std::move(made));
        return {};
      }
      case 'u': {
        std::vector<Value> pairs = pop_to_mark();
        return fill(top(), pairs, op.at);
      }
      case 's': {
        Value value = pop();
        Value key = pop();
        return fill(top(), {std::move(key), std::move(value)}, op.at);
      }
      case 'Q': push(storage(pop())); return {};
      case 'R': {
        Value arguments = pop();
        Value callable = pop();
        Value result;
        std::string fault = call(callable, arguments, op.at, result);
        if (!fault.empty()) return fault;
        push(std::move(result));
        return {};
      }
      case 'b': {
        pop();  // an OrderedDict's attributes (its _metadata): a state dict needs none
        const Value::Kind kind = top().kind;
        if (kind != Value::Kind::dict && kind != Value::Kind::tensor &&
            kind != Value::Kind::unusable) {
          return fmt::format("BUILD at byte {} sets the state of {}", op.at, kind_phrase(kind));
        }
        return {};
      }
      case '0': pop(); return {};
      case '1': pop_to_mark(); return {};
      case '2': push(top()); return {};
      case 'G': push(Value{}); return {};
      default:
        return fmt::format("opcode 0x{:02x} at byte {} has no place in a state dict", op.opcode,
                           op.at);
    }
  }

  Value result() { return top(); }

 private:
  static Value integer(int64_t number) {
    Value value = make(Value::Kind::integer);
    value.integer = number;
    return value;
  }

  static Value tuple(std::vector<Value> items) {
    Value value = make(Value::Kind::tuple);
    value.items = std::make_shared<const std::vector<Value>>(std::move(items));
    return value;
  }

  static Value dict() {
    Value value = make(Value::Kind::dict);
    value.dict = std::make_shared<Dict>();
    return value;
  }

  // LONG1's little-endian two's complement (Python's pickle of an int of
  // 2^31 or more), when it fits 64 bits.
  static Value long1(std::string_view bytes) {
    if (bytes.empty() || bytes.size() > 8) return Value{};
    uint64_t value = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
      value |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * i);
    }
    const size_t bits = bytes.size() * 8;
    if (bits < 64 && (value >> (bits - 1)) != 0) value |= ~uint64_t{0} << bits;
    return integer(static_cast<int64_t>(value));
  }

  void push(Value value) { stack_.push_back(std::move(value)); }

  // pickle_fault has checked every depth; an empty stack here would be a bug,
  // so it reads as an unknown value rather than as undefined behaviour.
  Value& top() {
    if (stack_.empty()) stack_.emplace_back();
    return stack_.back();
  }

  Value pop() {
    Value value = std::move(top());
    stack_.pop_back();
    return value;
  }

  std::vector<Value> pop_to_mark() {
    const size_t mark = marks_.empty() ? 0 : std::min(marks_.back(), stack_.size());
    if (!marks_.empty()) marks_.pop_back();
    const auto first = stack_.begin() + static_cast<std::ptrdiff_t>(mark);
    std::vector<Value> items(std::make_move_iterator(first), std::make_move_iterator(stack_.end()));
    stack_.erase(first, stack_.end());
    return items;
  }

  static std::string fill(Value& target, const std::vector<Value>& pairs, uint64_t at) {
    if (target.kind != Value::Kind::dict) {
      return fmt::format("SETITEM at byte {} sets items of {}", at, kind_phrase(target.kind));
    }
    for (size_t i = 0; i + 1 < pairs.size(); i += 2) target.dict->set(pairs[i], pairs[i + 1]);
    return {};
  }

  // ("storage", torch.<Type>Storage, key, location, count), which
  // pickle_fault has checked; anything else is an unknown value.
  static Value storage(const Value& id) {
    if (id.kind != Value::Kind::tuple || id.items->size() != 5) return Value{};
    const std::vector<Value>& items = *id.items;
    const auto type =
        items[1].kind == Value::Kind::global ? storage_type(*items[1].text) : std::nullopt;
    if (!type || items[2].kind != Value::Kind::text || items[4].kind != Value::Kind::integer ||
        items[4].integer < 0) {
      return Value{};
    }
    Value value = make(Value::Kind::storage, *items[2].text);
    value.dtype = *type;
    value.integer = items[4].integer;
    return value;
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
    const auto entry = records_.find(record);
    const uint64_t bytes =
        static_cast<uint64_t>(storage.integer) * c10::elementSize(storage.dtype);
    if (bytes > 0 && entry == records_.end()) {
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
    if (is_quantized(storage.dtype)) {
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
    result = make(Value::Kind::tensor);
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
      result = dict();
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

  std::string folder_;
  const std::map<std::string, ZipEntry>& records_;
  std::map<std::string, torch::Tensor> storages_;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  uint64_t memoized_ = 0;
};

}  // namespace

std::vector<StateEntry> read_state_dict(std::string_view archive) {
  std::vector<ZipEntry> entries;
  if (const std::string fault = zip_archive_fault(archive, &entries); !fault.empty()) {
    throw Error(fault);
  }
  // torch.save's layout: <name>/data.pkl, its storages in <name>/data/.
  std::map<std::string, ZipEntry> records;
  const ZipEntry* pickle = nullptr;
  for (const ZipEntry& entry : entries) {
    const std::string folded = folded_case(entry.name);
    if (folded == "data.pkl" ||
        (folded.size() > 9 && folded.compare(folded.size() - 9, 9, "/data.pkl") == 0)) {
      if (pickle != nullptr) {
        throw Error(fmt::format("holds two pickles, {} and {}", pickle->name, entry.name));
      }
      pickle = &entry;
    }
    records.emplace(folded, entry);
  }
  if (pickle == nullptr) throw Error("holds no data.pkl; torch.save writes one");
  const std::string pickle_name = folded_case(pickle->name);
  Reader reader(pickle_name.substr(0, pickle_name.size() - 4) + "/", records);
  const std::string fault =
      walk_pickle(pickle->data, [&](const PickleOp& op) { return reader.step(op); });
  if (!fault.empty()) {
    throw Error(fmt::format("{}: {}", pickle->name, fault));
  }
  const Value root = reader.result();
  if (root.kind != Value::Kind::dict) {
    throw Error(fmt::format("holds {}, expected a dict of tensors", kind_phrase(root.kind)));
  }
  if (root.dict->other_keys) throw Error("holds a dict whose keys are not all strings");
  std::vector<StateEntry> state;
  for (const auto& [name, value] : root.dict->entries) {
    StateEntry entry{name, value.tensor, {}};
    if (value.kind == Value::Kind::unusable) {
      entry.problem = *value.text;
    } else if (value.kind != Value::Kind::tensor) {
      entry.problem = fmt::format("is {}, expected a tensor", kind_phrase(value.kind));
    }
    state.push_back(std::move(entry));
  }
  return state;
}

}  // namespace trainloop::io
