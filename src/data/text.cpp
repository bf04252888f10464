#include "trainloop/data/text.h"

#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../io/files.h"
#include "trainloop/error.h"

namespace trainloop::data {
namespace {

constexpr int64_t kByteValues = 256;

// Ids as int64 on the CPU, in row-major order, or an Error naming `who`.
torch::Tensor flat_ids(const char* who, const torch::Tensor& ids) {
  if (!ids.defined()) throw Error(fmt::format("{}: undefined tensor, expected token ids", who));
  if (!c10::isIntegralType(ids.scalar_type(), /*includeBool=*/false)) {
    throw Error(fmt::format("{}: tensor of {}, expected integer token ids", who,
                            c10::toString(ids.scalar_type())));
  }
  return ids.detach().to(torch::kCPU, torch::kLong).contiguous().reshape({-1});
}

// Names the files of an error: all of them when few, the first ones otherwise.
std::string describe(const std::vector<std::string>& paths) {
  constexpr size_t kNamed = 3;
  std::string names;
  for (size_t i = 0; i < paths.size() && i < kNamed; ++i) {
    names += (i == 0 ? "" : " + ") + paths[i];
  }
  if (paths.size() > kNamed) names += fmt::format(" + {} more files", paths.size() - kNamed);
  return names;
}

// The checks of text_windows, apart so text_dataset can make them before it
// builds a vocabulary from the text.
void check_windows(const TextOptions& options, int64_t length, const std::string& source_name) {
  const int64_t window = options.window();
  if (window <= 0) {
    throw Error(fmt::format("{}: window {}, expected a positive number of tokens", source_name,
                            window));
  }
  if (options.stride() && *options.stride() <= 0) {
    throw Error(fmt::format("{}: stride {}, expected a positive number of tokens", source_name,
                            *options.stride()));
  }
  // Compared as length - 1 < window, so a huge window cannot overflow.
  if (length - 1 < window) {
    throw Error(fmt::format("{}: {} bytes, expected at least {} + 1 (a window of {} tokens and "
                            "the next one as its last target)",
                            source_name, length, window, window));
  }
}

}  // namespace

Vocabulary::Vocabulary() {
  for (int64_t b = 0; b < kByteValues; ++b) {
    bytes_.push_back(static_cast<char>(b));
    ids_[static_cast<size_t>(b)] = static_cast<int16_t>(b);
  }
}

Vocabulary Vocabulary::of(std::string_view text) {
  if (text.empty()) throw Error("Vocabulary::of: empty text, expected at least one byte");
  std::array<bool, kByteValues> seen{};
  for (const char c : text) seen[static_cast<unsigned char>(c)] = true;
  Vocabulary vocabulary;
  vocabulary.bytes_.clear();
  for (int64_t b = 0; b < kByteValues; ++b) {
    const auto index = static_cast<size_t>(b);
    vocabulary.ids_[index] = -1;
    if (!seen[index]) continue;
    vocabulary.ids_[index] = static_cast<int16_t>(vocabulary.bytes_.size());
    vocabulary.bytes_.push_back(static_cast<char>(b));
  }
  return vocabulary;
}

torch::Tensor Vocabulary::encode(std::string_view text, const std::string& source_name) const {
  torch::Tensor ids = torch::empty({static_cast<int64_t>(text.size())}, torch::kLong);
  int64_t* out = ids.data_ptr<int64_t>();
  for (size_t i = 0; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (ids_[byte] < 0) {
      throw Error(fmt::format("{}: byte 0x{:02x} at offset {} is not in the vocabulary of {} "
                              "bytes",
                              source_name, static_cast<int>(byte), i, size()));
    }
    out[i] = ids_[byte];
  }
  return ids;
}

std::string Vocabulary::decode(const torch::Tensor& ids) const {
  const torch::Tensor flat = flat_ids("decode", ids);
  const int64_t* id = flat.data_ptr<int64_t>();
  std::string text;
  text.reserve(static_cast<size_t>(flat.numel()));
  for (int64_t i = 0; i < flat.numel(); ++i) {
    if (id[i] < 0 || id[i] >= size()) {
      throw Error(fmt::format("decode: id {} at position {}, expected 0 to {}", id[i], i,
                              size() - 1));
    }
    text.push_back(bytes_[static_cast<size_t>(id[i])]);
  }
  return text;
}

std::string decode(const torch::Tensor& ids) { return Vocabulary().decode(ids); }

TensorDataset text_windows(std::string_view text, const TextOptions& options,
                           const std::string& source_name, const Vocabulary& vocabulary) {
  const auto length = static_cast<int64_t>(text.size());
  check_windows(options, length, source_name);
  const int64_t window = options.window();
  const int64_t stride = options.stride().value_or(window);
  const torch::Tensor ids = vocabulary.encode(text, source_name);
  const int64_t count = (length - 1 - window) / stride + 1;
  // Views, not copies: with stride 1 a copy would take T times the text.
  torch::Tensor inputs = ids.as_strided({count, window}, {stride, 1}, 0);
  torch::Tensor targets = ids.as_strided({count, window}, {stride, 1}, 1);
  return TensorDataset(std::move(inputs), std::move(targets));
}

std::string read_text(const std::vector<std::string>& paths) {
  if (paths.empty()) throw Error("read_text: no files given, expected at least one path");
  std::string text;
  for (const std::string& path : paths) {
    const std::string bytes = io::read_file(path);
    // Said here, where the file is known: later, an empty text is only "0
    // bytes" of all the files together.
    if (bytes.empty()) throw Error(fmt::format("{}: empty file, expected text", path));
    text += bytes;
  }
  return text;
}

TextData text_dataset(const std::vector<std::string>& paths, const TextOptions& options) {
  const std::string text = read_text(paths);
  const std::string name = describe(paths);
  check_windows(options, static_cast<int64_t>(text.size()), name);
  Vocabulary vocabulary = options.compact_vocabulary() ? Vocabulary::of(text) : Vocabulary();
  TensorDataset dataset = text_windows(text, options, name, vocabulary);
  return {std::move(dataset), std::move(vocabulary)};
}

}  // namespace trainloop::data
