#include "trainloop/data/cifar.h"

#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "../io/files.h"
#include "trainloop/error.h"

namespace trainloop::data {
namespace {

constexpr int64_t kChannels = 3;
constexpr int64_t kSide = 32;
constexpr int64_t kPixelBytes = kChannels * kSide * kSide;  // 3072

int64_t label_bytes(CifarVariant variant) { return variant == CifarVariant::cifar10 ? 1 : 2; }

std::string layout(CifarVariant variant) {
  return variant == CifarVariant::cifar10
             ? "1 label byte + 3072 pixel bytes"
             : "1 coarse label byte + 1 fine label byte + 3072 pixel bytes";
}

struct Label {
  const char* name;
  int64_t classes;
};

// The label bytes of a record, in file order.
std::vector<Label> cifar_labels(CifarVariant variant) {
  if (variant == CifarVariant::cifar10) return {{"label", 10}};
  return {{"coarse label", 20}, {"fine label", 100}};
}

// Which of the label bytes becomes the target.
int64_t kept_label(CifarVariant variant) { return variant == CifarVariant::cifar100_fine ? 1 : 0; }

std::string find_in(const std::filesystem::path& directory, const std::string& name) {
  std::error_code ignored;
  const auto path = directory / name;
  if (!std::filesystem::exists(path, ignored)) {
    throw Error(fmt::format("{}: {} not found", directory.string(), name));
  }
  return path.string();
}

// The folder that holds `first_file`: the directory itself, or the folder the
// official archive extracts to inside it.
std::filesystem::path data_folder(const std::string& directory, const std::string& archive_folder,
                                  const std::string& first_file) {
  namespace fs = std::filesystem;
  std::error_code ignored;
  if (!fs::is_directory(directory, ignored)) {
    throw Error(fmt::format("{}: not a directory, expected one holding {}", directory, first_file));
  }
  const fs::path nested = fs::path(directory) / archive_folder;
  if (!fs::exists(fs::path(directory) / first_file, ignored) &&
      fs::exists(nested / first_file, ignored)) {
    return nested;
  }
  return directory;
}

}  // namespace

const char* to_string(CifarVariant variant) {
  switch (variant) {
    case CifarVariant::cifar10: return "CIFAR-10";
    case CifarVariant::cifar100_fine: return "CIFAR-100 (fine labels)";
    case CifarVariant::cifar100_coarse: return "CIFAR-100 (coarse labels)";
  }
  return "CIFAR (unknown variant)";
}

int64_t cifar_record_bytes(CifarVariant variant) { return label_bytes(variant) + kPixelBytes; }

TensorDataset parse_cifar(std::string_view bytes, const std::string& source_name,
                          CifarVariant variant) {
  const int64_t record = cifar_record_bytes(variant);
  const auto size = static_cast<int64_t>(bytes.size());
  if (size == 0) {
    throw Error(fmt::format("{}: empty, expected {} records of {} bytes ({})", source_name,
                            to_string(variant), record, layout(variant)));
  }
  if (size % record != 0) {
    const int64_t whole = size / record;
    throw Error(fmt::format(
        "{}: {} bytes, expected a multiple of the {}-byte {} record ({}): {} records are {} "
        "bytes, {} are {}",
        source_name, size, record, to_string(variant), layout(variant), whole, whole * record,
        whole + 1, (whole + 1) * record));
  }
  const int64_t count = size / record;
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::vector<Label> labels = cifar_labels(variant);
  const int64_t kept = kept_label(variant);

  // Every label is checked before the images are allocated.
  torch::Tensor targets = torch::empty({count}, torch::kLong);
  int64_t* target = targets.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) {
    const unsigned char* at = data + i * record;
    for (size_t b = 0; b < labels.size(); ++b) {
      if (at[b] >= labels[b].classes) {
        throw Error(fmt::format("{}: record {} (byte offset {}): {} {}, expected 0 to {}",
                                source_name, i, i * record + static_cast<int64_t>(b),
                                labels[b].name, static_cast<int>(at[b]),
                                labels[b].classes - 1));
      }
    }
    target[i] = at[kept];
  }

  // The pixels of a record are already in [3, 32, 32] order (1024 red, then
  // green, then blue, each row by row), so each record is one copy.
  torch::Tensor pixels = torch::empty({count, kChannels, kSide, kSide}, torch::kUInt8);
  unsigned char* out = pixels.data_ptr<unsigned char>();
  for (int64_t i = 0; i < count; ++i) {
    std::memcpy(out + i * kPixelBytes, data + i * record + label_bytes(variant), kPixelBytes);
  }
  return TensorDataset(pixels.to(torch::kFloat32).div_(255), std::move(targets));
}

TensorDataset read_cifar(const std::string& path, CifarVariant variant) {
  return parse_cifar(io::read_file(path), path, variant);
}

TensorDataset read_cifar(const std::vector<std::string>& paths, CifarVariant variant) {
  if (paths.empty()) throw Error("read_cifar: no files given, expected at least one path");
  std::vector<torch::Tensor> inputs;
  std::vector<torch::Tensor> targets;
  for (const std::string& path : paths) {
    TensorDataset part = read_cifar(path, variant);
    inputs.push_back(std::move(part.inputs));
    targets.push_back(std::move(part.targets));
  }
  if (inputs.size() == 1) return TensorDataset(inputs[0], targets[0]);
  return TensorDataset(torch::cat(inputs), torch::cat(targets));
}

std::pair<TensorDataset, TensorDataset> cifar10(const std::string& directory) {
  const auto folder = data_folder(directory, "cifar-10-batches-bin", "data_batch_1.bin");
  // Find every file before reading any, so a missing test file does not cost
  // reading the training set first.
  std::vector<std::string> train_files;
  for (int i = 1; i <= 5; ++i) {
    train_files.push_back(find_in(folder, fmt::format("data_batch_{}.bin", i)));
  }
  const std::string test_file = find_in(folder, "test_batch.bin");
  TensorDataset train = read_cifar(train_files, CifarVariant::cifar10);
  TensorDataset test = read_cifar(test_file, CifarVariant::cifar10);
  return {std::move(train), std::move(test)};
}

std::pair<TensorDataset, TensorDataset> cifar100(const std::string& directory,
                                                 CifarVariant labels) {
  if (labels == CifarVariant::cifar10) {
    throw Error(fmt::format("cifar100({}): variant CIFAR-10, expected cifar100_fine or "
                            "cifar100_coarse",
                            directory));
  }
  const auto folder = data_folder(directory, "cifar-100-binary", "train.bin");
  const std::string train_file = find_in(folder, "train.bin");
  const std::string test_file = find_in(folder, "test.bin");
  TensorDataset train = read_cifar(train_file, labels);
  TensorDataset test = read_cifar(test_file, labels);
  return {std::move(train), std::move(test)};
}

}  // namespace trainloop::data
