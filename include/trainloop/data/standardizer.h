#pragma once

#include <torch/torch.h>

#include <string>

#include "trainloop/export.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// Standardizes features column by column: `(x - mean) / scale`, with the
/// mean and the population standard deviation (divided by N) of each column
/// of the data it was fitted on, like scikit-learn's `StandardScaler`. A
/// column that is constant, up to the rounding error of computing its
/// variance (scikit-learn's test: var <= N·eps·var + (N·mean·eps)², eps the
/// float64 epsilon), gets scale 1, so it is only centred. Statistics are
/// computed and kept in float64 on the CPU; `transform` returns the input's
/// dtype on its device.
///
/// Example:
///   Standardizer standardizer(train.inputs);   // fit on the training part only
///   train = standardizer.transform(train);
///   test = standardizer.transform(test);
class TRAINLOOP_API Standardizer {
 public:
  /// An unfitted standardizer; `fit` or `load` it before `transform`.
  Standardizer() = default;
  /// Fits on `features` (see `fit`).
  explicit Standardizer(const torch::Tensor& features);

  /// Learns the mean and scale of each column of floating-point `features`
  /// `[N, F]` (N >= 1, all values finite). Throws `Error` otherwise.
  Standardizer& fit(const torch::Tensor& features);
  /// Whether `fit` or `load` has run.
  bool fitted() const { return mean_.defined(); }

  /// `(features - mean) / scale` for floating-point `features` `[N, F]` with
  /// the fitted F. Throws `Error` when unfitted or for another shape.
  torch::Tensor transform(const torch::Tensor& features) const;
  /// The dataset with its inputs transformed and its targets as they were.
  TensorDataset transform(const TensorDataset& dataset) const;
  /// `features * scale + mean`: undoes `transform`.
  torch::Tensor inverse_transform(const torch::Tensor& features) const;

  /// The mean of each column, float64 `[F]`.
  const torch::Tensor& mean() const { return mean_; }
  /// The scale of each column, float64 `[F]`: its standard deviation, or 1.
  const torch::Tensor& scale() const { return scale_; }

  /// Writes mean and scale into `archive` under `key`, e.g. beside a model's
  /// parameters in one file. Throws `Error` when unfitted.
  void save(torch::serialize::OutputArchive& archive,
            const std::string& key = "standardizer") const;
  /// Reads what `save` wrote under `key`. Throws `Error` when the archive
  /// holds no such entry or one that is not a standardizer's.
  void load(torch::serialize::InputArchive& archive, const std::string& key = "standardizer");

 private:
  torch::Tensor checked(const torch::Tensor& features, const char* who) const;

  torch::Tensor mean_;
  torch::Tensor scale_;
};

}  // namespace trainloop::data
