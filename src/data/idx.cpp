#include "trainloop/data/idx.h"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../io/byte_order.h"
#include "../io/files.h"
#include "trainloop/error.h"

namespace trainloop::data {
namespace {

constexpr uint32_t kImageMagic = 0x00000803;  // uint8, 3 dimensions
constexpr uint32_t kLabelMagic = 0x00000801;  // uint8, 1 dimension
constexpr int kMaxDims = 8;
// Far above any IDX file in use; a header beyond it is taken as corrupt.
constexpr uint64_t kMaxDataBytes = uint64_t{16} << 30;
constexpr size_t kInflateChunkBytes = size_t{1} << 20;

struct Header {
  uint32_t magic = 0;
  torch::ScalarType dtype = torch::kUInt8;
  size_t element_bytes = 1;
  std::vector<int64_t> sizes;
  uint64_t data_bytes = 0;
};

uint32_t big_endian_u32(const unsigned char* bytes) {
  return static_cast<uint32_t>(io::load_big_endian(bytes, 4));
}

Header read_header(io::InputFile& reader, const std::string& path,
                   std::optional<uint32_t> expected_magic) {
  std::array<unsigned char, 4> magic_bytes{};
  const size_t got = reader.read(magic_bytes.data(), magic_bytes.size());
  if (got < magic_bytes.size()) {
    throw Error(
        fmt::format("{}: truncated: expected a 4-byte magic number, found {} bytes", path, got));
  }
  Header header;
  header.magic = big_endian_u32(magic_bytes.data());
  if (expected_magic && header.magic != *expected_magic) {
    throw Error(fmt::format("{}: magic 0x{:08x}, expected 0x{:08x}", path, header.magic,
                            *expected_magic));
  }
  if (magic_bytes[0] != 0 || magic_bytes[1] != 0) {
    throw Error(fmt::format(
        "{}: magic 0x{:08x}: expected two zero bytes, a type byte and a dimension count", path,
        header.magic));
  }
  switch (magic_bytes[2]) {
    case 0x08: header.dtype = torch::kUInt8; header.element_bytes = 1; break;
    case 0x09: header.dtype = torch::kInt8; header.element_bytes = 1; break;
    case 0x0b: header.dtype = torch::kInt16; header.element_bytes = 2; break;
    case 0x0c: header.dtype = torch::kInt32; header.element_bytes = 4; break;
    case 0x0d: header.dtype = torch::kFloat32; header.element_bytes = 4; break;
    case 0x0e: header.dtype = torch::kFloat64; header.element_bytes = 8; break;
    default:
      throw Error(fmt::format(
          "{}: magic 0x{:08x}: type byte 0x{:02x}, expected one of 0x08, 0x09, 0x0b, 0x0c, "
          "0x0d, 0x0e",
          path, header.magic, magic_bytes[2]));
  }
  const int dims = magic_bytes[3];
  if (dims < 1 || dims > kMaxDims) {
    throw Error(fmt::format("{}: magic 0x{:08x}: {} dimensions, expected 1 to {}", path,
                            header.magic, dims, kMaxDims));
  }

  std::array<unsigned char, 4 * kMaxDims> dim_bytes{};
  const size_t want = 4 * static_cast<size_t>(dims);
  const size_t found = reader.read(dim_bytes.data(), want);
  if (found < want) {
    throw Error(fmt::format("{}: truncated: expected {} bytes of dimensions, found {}", path,
                            want, found));
  }
  bool empty = false;
  for (int d = 0; d < dims; ++d) {
    header.sizes.push_back(big_endian_u32(dim_bytes.data() + 4 * d));
    empty = empty || header.sizes.back() == 0;
  }
  // Checked one factor at a time, so the product can neither overflow nor
  // pass the cap unnoticed. An empty tensor's other dimensions are capped
  // too: LibTorch multiplies them all and rejects a product that overflows
  // before it reaches the zero (found by fuzz/idx_fuzzer).
  const uint64_t max_elements = kMaxDataBytes / header.element_bytes;
  uint64_t elements = 1;
  for (const int64_t size : header.sizes) {
    if (size == 0) continue;
    if (elements > max_elements / static_cast<uint64_t>(size)) {
      throw Error(fmt::format("{}: dimensions [{}] describe more than {} bytes of data, "
                              "expected at most {} GiB",
                              path, fmt::join(header.sizes, ", "), kMaxDataBytes,
                              kMaxDataBytes >> 30));
    }
    elements *= static_cast<uint64_t>(size);
  }
  header.data_bytes = empty ? 0 : elements * header.element_bytes;
  return header;
}

// Turns the big-endian elements into host order. Assembling each value from
// its bytes works whatever the host's byte order is.
template <class Unsigned>
void from_big_endian(unsigned char* data, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    unsigned char* bytes = data + i * sizeof(Unsigned);
    const auto value = static_cast<Unsigned>(io::load_big_endian(bytes, sizeof(Unsigned)));
    std::memcpy(bytes, &value, sizeof(Unsigned));
  }
}

torch::Tensor read_idx_checked(const std::string& path, std::optional<uint32_t> expected_magic) {
  io::InputFile reader(path, /*gunzip=*/true);
  const Header header = read_header(reader, path, expected_magic);
  if (header.data_bytes == 0) return torch::empty(header.sizes, header.dtype);

  // Grow the buffer only as data arrives: a corrupt header in a tiny file
  // must fail on the missing data, not on a giant allocation.
  auto buffer = std::make_unique<std::vector<unsigned char>>();
  const auto total = static_cast<size_t>(header.data_bytes);
  while (buffer->size() < total) {
    const size_t chunk = std::min(kInflateChunkBytes, total - buffer->size());
    if (buffer->size() + chunk > buffer->capacity()) {
      buffer->reserve(std::min(total, std::max(2 * buffer->capacity(), buffer->size() + chunk)));
    }
    const size_t old_size = buffer->size();
    buffer->resize(old_size + chunk);
    const size_t got = reader.read(buffer->data() + old_size, chunk);
    buffer->resize(old_size + got);
    if (got < chunk) break;
  }
  if (buffer->size() < total) {
    throw Error(fmt::format("{}: truncated: expected {} bytes of data, found {}", path, total,
                            buffer->size()));
  }
  // Data past the described tensor means the header does not describe the
  // file; for gzip this read also makes zlib verify the trailing checksum.
  unsigned char extra = 0;
  if (reader.read(&extra, 1) != 0) {
    throw Error(fmt::format("{}: more data than the {} bytes its dimensions describe", path,
                            total));
  }
  // A gzip stream cut after the data, its checksum missing, is corrupt too.
  reader.check_complete();

  const size_t count = total / header.element_bytes;
  switch (header.element_bytes) {
    case 2: from_big_endian<uint16_t>(buffer->data(), count); break;
    case 4: from_big_endian<uint32_t>(buffer->data(), count); break;
    case 8: from_big_endian<uint64_t>(buffer->data(), count); break;
    default: break;
  }
  // The tensor takes over the buffer instead of copying it, so the peak
  // memory is the data's size once.
  void* data = buffer->data();
  auto* owner = buffer.release();
  return torch::from_blob(
      data, header.sizes, [owner](void*) { delete owner; },
      torch::TensorOptions().dtype(header.dtype));
}

// Prefers the compressed file, as distributed, then the unpacked one.
std::string find_file(const std::string& directory, const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ignored;
  const fs::path base = fs::path(directory) / name;
  const fs::path gz = fs::path(directory) / (name + ".gz");
  if (fs::exists(gz, ignored)) return gz.string();
  if (fs::exists(base, ignored)) return base.string();
  throw Error(fmt::format("{}: neither {} nor {}.gz found", directory, name, name));
}

}  // namespace

torch::Tensor read_idx(const std::string& path) { return read_idx_checked(path, std::nullopt); }

namespace {

// Images and labels as stored (uint8), one label per image.
std::pair<torch::Tensor, torch::Tensor> read_images_and_labels(const std::string& images_path,
                                                               const std::string& labels_path) {
  torch::Tensor images = read_idx_checked(images_path, kImageMagic);
  torch::Tensor labels = read_idx_checked(labels_path, kLabelMagic);
  if (images.size(0) != labels.size(0)) {
    throw Error(fmt::format("{} holds {} images, but {} holds {} labels, expected one per image",
                            images_path, images.size(0), labels_path, labels.size(0)));
  }
  return {std::move(images), std::move(labels)};
}

TensorDataset to_dataset(const torch::Tensor& images, const torch::Tensor& labels) {
  return TensorDataset(images.to(torch::kFloat32).div_(255).unsqueeze(1),
                       labels.to(torch::kInt64));
}

// Fashion-MNIST's content: 28×28 images and the classes 0 to 9, so a wrong
// file fails here, naming itself, not later as a shape error inside a model.
void check_fashion_mnist(const std::string& images_path, const torch::Tensor& images,
                         const std::string& labels_path, const torch::Tensor& labels) {
  constexpr int64_t kSide = 28;
  constexpr int64_t kClasses = 10;
  if (images.size(1) != kSide || images.size(2) != kSide) {
    throw Error(fmt::format("{}: images of {}\u00d7{}, expected {}\u00d7{} (Fashion-MNIST)",
                            images_path, images.size(1), images.size(2), kSide, kSide));
  }
  const auto* label = labels.data_ptr<uint8_t>();
  for (int64_t i = 0; i < labels.numel(); ++i) {
    if (label[i] >= kClasses) {
      throw Error(fmt::format("{}: label {} at index {}, expected 0 to {} (Fashion-MNIST)",
                              labels_path, static_cast<int>(label[i]), i, kClasses - 1));
    }
  }
}

TensorDataset read_fashion_mnist(const std::string& images_path, const std::string& labels_path) {
  const auto [images, labels] = read_images_and_labels(images_path, labels_path);
  check_fashion_mnist(images_path, images, labels_path, labels);
  return to_dataset(images, labels);
}

}  // namespace

TensorDataset read_idx_dataset(const std::string& images_path, const std::string& labels_path) {
  const auto [images, labels] = read_images_and_labels(images_path, labels_path);
  return to_dataset(images, labels);
}

std::pair<TensorDataset, TensorDataset> fashion_mnist(const std::string& directory) {
  // Find all four before reading any, so a missing test file does not cost
  // reading the training set first.
  const std::string train_images = find_file(directory, "train-images-idx3-ubyte");
  const std::string train_labels = find_file(directory, "train-labels-idx1-ubyte");
  const std::string test_images = find_file(directory, "t10k-images-idx3-ubyte");
  const std::string test_labels = find_file(directory, "t10k-labels-idx1-ubyte");
  TensorDataset train = read_fashion_mnist(train_images, train_labels);
  TensorDataset test = read_fashion_mnist(test_images, test_labels);
  return {std::move(train), std::move(test)};
}

}  // namespace trainloop::data
