#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <utility>

#include "trainloop/export.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// The examples of each part of a split, as int64 indices `[n]` into the
/// dataset, in ascending order.
struct SplitIndices {
  /// Indices of the training examples.
  torch::Tensor train;
  /// Indices of the test examples.
  torch::Tensor test;
};

/// Splits `0..N-1` into training and test indices, deterministically from
/// `seed`: the order is `epoch_permutation(N, seed, 0)`, the same on every
/// platform and LibTorch version.
///
/// The test part holds ceil(test_fraction × N) examples, as scikit-learn's
/// `train_test_split` (178 × 0.2 → 36 test, 142 training).
///
/// With `stratify`, the targets must be integer class labels `[N]`, each
/// class with at least 2 examples, and each class c of n_c examples gets
/// floor(n_test × n_c / N) test examples; the test examples still missing go
/// one each to the classes with the largest remainders of that division
/// (ties: the smaller class label), skipping a class that would keep no
/// training example. The examples of a class that go to the test part are
/// the first ones in the permutation.
///
/// Throws `Error` for a fraction outside (0, 1), an empty dataset, a part
/// left empty, or (stratified) targets that are missing, not integers `[N]`,
/// or with a class of one example.
/// Example: `auto parts = train_test_split_indices(table.dataset, 0.2, 42, true);`
TRAINLOOP_API SplitIndices train_test_split_indices(const TensorDataset& dataset,
                                                    double test_fraction, uint64_t seed,
                                                    bool stratify = false);

/// `train_test_split_indices`, then the two parts as datasets (training, test).
/// Example: `auto [train, test] = train_test_split(table.dataset, 0.2, 42, /*stratify=*/true);`
TRAINLOOP_API std::pair<TensorDataset, TensorDataset> train_test_split(
    const TensorDataset& dataset, double test_fraction, uint64_t seed, bool stratify = false);

/// The examples `indices` (int64 `[n]`, each in 0..N-1) of `dataset`, copied.
/// Throws `Error` for indices of another shape or type, or out of range.
TRAINLOOP_API TensorDataset subset(const TensorDataset& dataset, const torch::Tensor& indices);

}  // namespace trainloop::data
