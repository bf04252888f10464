// Writes a state dict as Python's torch.save(model.state_dict()) does.
//
// Why by hand: no LibTorch API writes a file that PyTorch 2.6+'s default
// torch.load (weights_only=True) accepts. torch::pickle_save tags the dict
// with torch.jit._pickle.restore_type_tag, a global weights_only refuses;
// torch::save and OutputArchive write TorchScript modules. So the pickle is
// written here, opcode by opcode as Python's pickler emits them (protocol 2),
// holding only globals weights_only allows: collections.OrderedDict,
// torch._utils._rebuild_tensor_v2 and torch.<Type>Storage. The zip around it
// is written by caffe2::serialize::PyTorchStreamWriter, the writer behind
// Python's torch.save, so its records, alignment and version match.

#include <caffe2/serialize/inline_container.h>
#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <limits>

#include "pickle.h"
#include "state_dict.h"
#include "trainloop/error.h"

namespace trainloop::io {

namespace {

// The class torch.save names a storage of `type` by; nullptr for a type it
// has none for. Quantized tensors are refused before, and Python's torch
// 1.13 has no ComplexHalfStorage to load.
const char* storage_class(torch::ScalarType type) {
  if (type == torch::kComplexHalf || c10::isQIntType(type)) return nullptr;
  return storage_class_name(type);
}

bool host_is_little_endian() {
  const uint16_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

// A pickle of protocol 2, written as Python's pickle.Pickler writes the
// same values (without its memo, which only shortens repeats).
class Pickle {
 public:
  Pickle() { bytes_ = "\x80\x02"; }  // PROTO 2

  void op(char opcode) { bytes_.push_back(opcode); }

  void global(std::string_view module, std::string_view name) {
    op('c');  // GLOBAL
    bytes_.append(module).append("\n").append(name).append("\n");
  }

  void text(std::string_view value) {
    if (value.size() > std::numeric_limits<uint32_t>::max()) {
      throw Error(fmt::format("a name of {} bytes cannot be pickled", value.size()));
    }
    op('X');  // BINUNICODE
    little(value.size(), 4);
    bytes_.append(value);
  }

  void integer(int64_t value) {
    if (value >= 0 && value <= 0xff) {
      op('K');  // BININT1
      little(static_cast<uint64_t>(value), 1);
    } else if (value >= 0 && value <= 0xffff) {
      op('M');  // BININT2
      little(static_cast<uint64_t>(value), 2);
    } else if (value >= std::numeric_limits<int32_t>::min() &&
               value <= std::numeric_limits<int32_t>::max()) {
      op('J');  // BININT
      little(static_cast<uint64_t>(value), 4);
    } else {
      // LONG1: the fewest little-endian two's complement bytes that keep the sign.
      size_t count = 1;
      while (count < 8) {
        const int64_t low = -(int64_t{1} << (8 * count - 1));
        if (value >= low && value < -low) break;
        ++count;
      }
      op('\x8a');
      little(count, 1);
      little(static_cast<uint64_t>(value), count);
    }
  }

  // As Python pickles a tuple of integers: EMPTY_TUPLE, TUPLE1 to TUPLE3,
  // or MARK ... TUPLE.
  void tuple(c10::IntArrayRef values) {
    if (values.empty()) return op(')');
    if (values.size() > 3) op('(');
    for (const int64_t value : values) integer(value);
    op(values.size() > 3 ? 't' : static_cast<char>(0x84 + values.size()));  // TUPLE1 is 0x85
  }

  std::string take() {
    op('.');  // STOP
    return std::move(bytes_);
  }

 private:
  void little(uint64_t value, size_t count) {
    for (size_t i = 0; i < count; ++i) bytes_.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
  }

  std::string bytes_;
};

// `tensor` as it is written: detached, on the CPU, contiguous, with no
// conjugate or negative bit, and alone in a storage of its own size.
torch::Tensor standalone(const std::string& name, const torch::Tensor& tensor) {
  if (!tensor.defined()) throw Error(fmt::format("\"{}\" is an undefined tensor", name));
  if (tensor.is_quantized() || tensor.layout() != torch::kStrided) {
    throw Error(fmt::format("\"{}\" is a {} tensor; only dense tensors are written", name,
                            tensor.is_quantized() ? "quantized" : "sparse or other non-strided"));
  }
  if (storage_class(tensor.scalar_type()) == nullptr) {
    throw Error(fmt::format("\"{}\" is of dtype {}, which torch.save has no storage class for",
                            name, c10::toString(tensor.scalar_type())));
  }
  try {
    torch::Tensor out =
        tensor.detach().to(torch::kCPU).resolve_conj().resolve_neg().contiguous();
    const uint64_t bytes = static_cast<uint64_t>(out.numel()) * out.element_size();
    if (out.storage_offset() != 0 || out.storage().nbytes() != bytes) {
      out = out.clone(at::MemoryFormat::Contiguous);
    }
    return out;
  } catch (const c10::Error& e) {
    throw Error(fmt::format("\"{}\" cannot be copied to the CPU: {}", name,
                            e.what_without_backtrace()));
  }
}

}  // namespace

std::string state_dict_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& entries) {
  std::vector<torch::Tensor> tensors;
  tensors.reserve(entries.size());
  for (const auto& [name, tensor] : entries) tensors.push_back(standalone(name, tensor));

  // OrderedDict() then SETITEMS of (name, tensor) pairs; each tensor is
  // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
  // backward_hooks), its storage the persistent id ("storage",
  // torch.<Type>Storage, key, "cpu", element count) of record data/<key>.
  Pickle pickle;
  pickle.global("collections", "OrderedDict");
  pickle.op(')');  // EMPTY_TUPLE
  pickle.op('R');  // REDUCE
  if (!entries.empty()) {
    pickle.op('(');  // MARK
    for (size_t i = 0; i < entries.size(); ++i) {
      const torch::Tensor& tensor = tensors[i];
      pickle.text(entries[i].first);
      pickle.global("torch._utils", "_rebuild_tensor_v2");
      pickle.op('(');
      pickle.op('(');
      pickle.text("storage");
      pickle.global("torch", storage_class(tensor.scalar_type()));
      pickle.text(std::to_string(i));
      pickle.text("cpu");
      pickle.integer(tensor.numel());
      pickle.op('t');  // TUPLE
      pickle.op('Q');  // BINPERSID
      pickle.integer(0);
      pickle.tuple(tensor.sizes());
      pickle.tuple(tensor.strides());
      pickle.op('\x89');  // NEWFALSE: requires_grad
      pickle.global("collections", "OrderedDict");
      pickle.op(')');
      pickle.op('R');
      pickle.op('t');
      pickle.op('R');
    }
    pickle.op('u');  // SETITEMS
  }
  const std::string data = pickle.take();

  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&out](const void* bytes, size_t size) {
    if (bytes == nullptr) {
      out.append(size, '\0');
    } else {
      out.append(static_cast<const char*>(bytes), size);
    }
    return size;
  });
  try {
    // The records and their order of PyTorch 2.13's torch.save; the writer
    // adds "version" (and, in PyTorch 2, ".data/serialization_id").
    writer.writeRecord("data.pkl", data.data(), data.size());
    writer.writeRecord(".format_version", "1", 1);
    writer.writeRecord(".storage_alignment", "64", 2);
    const char* byteorder = host_is_little_endian() ? "little" : "big";
    writer.writeRecord("byteorder", byteorder, std::strlen(byteorder));
    for (size_t i = 0; i < tensors.size(); ++i) {
      const torch::Tensor& tensor = tensors[i];
      writer.writeRecord("data/" + std::to_string(i), tensor.data_ptr(),
                         static_cast<size_t>(tensor.numel()) * tensor.element_size());
    }
    writer.writeEndOfFile();
  } catch (const c10::Error& e) {
    throw Error(fmt::format("cannot write the state dict: {}", e.what_without_backtrace()));
  }
  return out;
}

}  // namespace trainloop::io
