#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>

#include "trainloop/export.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// Reads an IDX file (the MNIST family's format), gzip-compressed when the
/// name ends in ".gz". Returns a tensor of the file's type and dimensions
/// (uint8 for images and labels). Throws `Error` naming the file for a missing
/// file, bad gzip data, a wrong magic number, absurd dimensions or truncated
/// data; never allocates more than the data actually present.
TRAINLOOP_API torch::Tensor read_idx(const std::string& path);

/// Reads an images file and a labels file of the same count into a dataset:
/// inputs float `[N, 1, H, W]` scaled to [0, 1], targets int64 `[N]`.
TRAINLOOP_API TensorDataset read_idx_dataset(const std::string& images_path,
                                             const std::string& labels_path);

/// Fashion-MNIST (or MNIST) from a directory holding
/// `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`, e.g. Debian's
/// /usr/share/datasets/fashion-mnist. Returns (train, test). Checks the
/// content too: 28×28 images, labels 0 to 9, one label per image; an `Error`
/// names the file and what was expected.
TRAINLOOP_API std::pair<TensorDataset, TensorDataset> fashion_mnist(const std::string& directory);

}  // namespace trainloop::data
