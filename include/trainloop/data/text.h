#pragma once

#include <torch/arg.h>
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// The token ids of a byte-level language model: a map between bytes and ids
/// 0..size()-1. The default holds all 256 byte values, id = byte value, so any
/// text (UTF-8 included, one token per byte) encodes; `Vocabulary::of(text)`
/// keeps only the bytes seen, for a smaller embedding and output layer.
class TRAINLOOP_API Vocabulary {
 public:
  /// All 256 bytes; the id of a byte is its value.
  Vocabulary();
  /// The distinct bytes of `text` in increasing byte value; the id of a byte
  /// is its rank. Throws `Error` for empty text.
  static Vocabulary of(std::string_view text);

  /// Number of ids (the model's number of classes).
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  /// Whether `byte` has an id.
  bool contains(unsigned char byte) const { return ids_[byte] >= 0; }
  /// The bytes in id order: `bytes()[id]` is the byte of `id`.
  const std::string& bytes() const { return bytes_; }

  /// The ids of `text`, int64 `[text.size()]`. Throws `Error` starting with
  /// `source_name` and naming the offset of a byte the vocabulary lacks.
  torch::Tensor encode(std::string_view text, const std::string& source_name = "text") const;
  /// The text of integer `ids` of any shape, read in row-major order (e.g. a
  /// `[T]` sample or an `[N, T]` batch, rows joined). Throws `Error` naming
  /// the position of an id outside 0..size()-1 or a non-integer tensor.
  std::string decode(const torch::Tensor& ids) const;

 private:
  std::string bytes_;               // id -> byte
  std::array<int16_t, 256> ids_{};  // byte -> id, -1 when absent
};

/// Decodes ids of the default 256-byte vocabulary (id = byte value) back to
/// text; see `Vocabulary::decode`.
/// Example: `decode(torch::tensor({104, 105}))` is "hi".
TRAINLOOP_API std::string decode(const torch::Tensor& ids);

/// Settings for text windows.
/// Example: `TextOptions(128).stride(64).compact_vocabulary(true)`
struct TextOptions {
  /* implicit */ TextOptions(int64_t window) : window_(window) {}
  /// Tokens per example, T (> 0).
  TORCH_ARG(int64_t, window);
  /// Tokens from the start of one window to the start of the next (> 0);
  /// empty (the default): the window, so windows do not overlap.
  TORCH_ARG(std::optional<int64_t>, stride) = std::nullopt;
  /// Whether `text_dataset` uses the bytes seen (`Vocabulary::of`) instead of
  /// all 256.
  TORCH_ARG(bool, compact_vocabulary) = false;
};

/// Windows of a text for next-token prediction: example i holds the ids of
/// bytes [i*stride, i*stride + T) as inputs int64 `[N, T]` and those of
/// [i*stride + 1, i*stride + T + 1) as targets int64 `[N, T]`, i.e. the same
/// window shifted by one; N = (L - T - 1) / stride + 1 for a text of L bytes,
/// so a tail shorter than a stride is left out. Both tensors are views into
/// one buffer of the text's ids (8 bytes per byte of text, whatever the
/// stride); a batch cut by `Epochs` is a contiguous copy. Throws `Error`
/// starting with `source_name` for a window or stride <= 0, a text of T bytes
/// or fewer, or a byte outside `vocabulary`.
TRAINLOOP_API TensorDataset text_windows(std::string_view text, const TextOptions& options,
                                         const std::string& source_name,
                                         const Vocabulary& vocabulary = Vocabulary());

/// The bytes of the files in `paths`, concatenated in the order given.
/// Throws `Error` naming a file that is missing, unreadable, empty or not a
/// regular file (a FIFO is refused before it is opened), or when `paths` is
/// empty.
TRAINLOOP_API std::string read_text(const std::vector<std::string>& paths);

/// A text dataset and the vocabulary its ids belong to.
struct TextData {
  /// Windows and shifted targets (see `text_windows`).
  TensorDataset dataset;
  /// The 256 bytes, or the bytes seen with `compact_vocabulary(true)`.
  Vocabulary vocabulary;
};

/// Windows over the concatenated bytes of `paths` (windows may span two
/// files). Errors name the file, or the files, concerned.
/// Example: `text_dataset({"a.txt", "b.txt"}, TextOptions(128))`
TRAINLOOP_API TextData text_dataset(const std::vector<std::string>& paths,
                                    const TextOptions& options);

}  // namespace trainloop::data
