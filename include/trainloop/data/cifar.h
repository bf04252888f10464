#pragma once

#include <torch/torch.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// Which CIFAR binary layout a file has, and which label becomes the target.
/// CIFAR-10 records are 1 label byte (0..9) + 3072 pixel bytes; CIFAR-100
/// records are 1 coarse label byte (0..19) + 1 fine label byte (0..99) + 3072
/// pixel bytes. Both CIFAR-100 labels are checked whichever one is kept.
enum class CifarVariant {
  cifar10,          ///< `data_batch_{1..5}.bin`, `test_batch.bin`: 10 classes
  cifar100_fine,    ///< `train.bin`, `test.bin`, fine labels: 100 classes
  cifar100_coarse,  ///< `train.bin`, `test.bin`, coarse labels: 20 superclasses
};

/// The variant's name, e.g. "CIFAR-100 (fine labels)".
TRAINLOOP_API const char* to_string(CifarVariant variant);

/// Bytes per record of the variant: 3073 for CIFAR-10, 3074 for CIFAR-100.
TRAINLOOP_API int64_t cifar_record_bytes(CifarVariant variant);

/// Parses the records of a CIFAR binary file held in memory: inputs float
/// `[N, 3, 32, 32]` (channels R, G, B; rows top to bottom) scaled to [0, 1],
/// targets int64 `[N]`. `source_name` (e.g. the file's path) starts every
/// error message. Throws `Error` for empty input, a size that is not a whole
/// number of records (naming the size found and the record size expected),
/// or a label out of range (naming the record, its byte offset and the value).
/// Safe on any bytes: it checks every label before it allocates, and
/// allocates only in proportion to `bytes.size()`.
TRAINLOOP_API TensorDataset parse_cifar(std::string_view bytes, const std::string& source_name,
                                        CifarVariant variant);

/// Reads one CIFAR binary file (see `parse_cifar`). Throws `Error` naming
/// the path for a missing or unreadable file and for bad content.
TRAINLOOP_API TensorDataset read_cifar(const std::string& path, CifarVariant variant);

/// Reads several CIFAR binary files of one variant into one dataset, their
/// records in the order given (e.g. the five CIFAR-10 training batches).
TRAINLOOP_API TensorDataset read_cifar(const std::vector<std::string>& paths, CifarVariant variant);

/// CIFAR-10 from a directory holding `data_batch_1.bin` … `data_batch_5.bin`
/// and `test_batch.bin` (the extracted `cifar-10-binary.tar.gz`; a directory
/// holding the archive's `cifar-10-batches-bin/` folder works too). Returns
/// (train, test): 50000 and 10000 images for the real data set. Throws
/// `Error` naming the directory and the file that is missing.
TRAINLOOP_API std::pair<TensorDataset, TensorDataset> cifar10(const std::string& directory);

/// CIFAR-100 from a directory holding `train.bin` and `test.bin` (or the
/// archive's `cifar-100-binary/` folder), with fine (default) or coarse
/// labels as targets. Returns (train, test).
TRAINLOOP_API std::pair<TensorDataset, TensorDataset> cifar100(
    const std::string& directory, CifarVariant labels = CifarVariant::cifar100_fine);

}  // namespace trainloop::data
