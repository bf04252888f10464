#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "trainloop/export.h"
#include "trainloop/reduce_op.h"

namespace trainloop {

/// A streaming metric: `update` accumulates tensors on the outputs' device
/// without reading them back (no host-device sync); `compute` reads the
/// accumulated value once, when a number is needed.
class TRAINLOOP_API Metric {
 public:
  virtual ~Metric() = default;
  /// Column name in logs, e.g. "accuracy". Validation values get a "val_" prefix.
  virtual std::string name() const = 0;
  /// Forgets everything accumulated.
  virtual void reset() = 0;
  /// Adds one batch: model outputs, targets and the batch's (mean) loss.
  virtual void update(const torch::Tensor& outputs, const torch::Tensor& targets,
                      const torch::Tensor& loss) = 0;
  /// The value over everything since `reset`; NaN before any update.
  virtual double compute() const = 0;
  /// A fresh (reset) metric with the same settings.
  virtual std::shared_ptr<Metric> clone() const = 0;
  /// Writes what has been accumulated since `reset`, so a checkpoint taken
  /// inside an epoch resumes the running value exactly. The built-in metrics
  /// implement it; the default throws `Error` naming the metric (override
  /// `save` and `load` in a metric of your own to checkpoint inside epochs).
  virtual void save(torch::serialize::OutputArchive& archive) const;
  /// Replaces the accumulated state with what `save` wrote.
  virtual void load(torch::serialize::InputArchive& archive);
  /// Combines what every process of a data-parallel fit accumulated, so
  /// that afterwards `compute` on any of them gives the value over all their
  /// batches: sums the state tensors and counts with `reduce` (every process
  /// calls it in the same order with tensors of the same shapes, also one
  /// that has accumulated nothing). The loop calls it at the end of each
  /// phase. The built-in metrics implement it; the default throws `Error`
  /// naming the metric, and a data-parallel fit checks that at its start.
  virtual void all_reduce(const ReduceFunction& reduce);
};

namespace metrics {
/// Mean of the per-batch loss, weighted by batch size. Name "loss".
TRAINLOOP_API std::shared_ptr<Metric> loss();
/// Fraction of correct predictions. Outputs `[N, C]` are scored by argmax
/// (the first maximum on ties); outputs `[N]` or `[N, 1]` are binary logits,
/// positive when > 0. Name "accuracy".
TRAINLOOP_API std::shared_ptr<Metric> accuracy();
/// Fraction of examples whose target is among the k highest scores of
/// `[N, C]` outputs; ties rank the higher class index first, as scikit-learn's
/// `top_k_accuracy_score`. Name "top{k}_accuracy", e.g. "top5_accuracy".
TRAINLOOP_API std::shared_ptr<Metric> top_k_accuracy(int64_t k);
/// Matthews correlation coefficient, binary or multiclass (the R_K
/// statistic, as scikit-learn's `matthews_corrcoef`), from a confusion matrix
/// kept on the device; 0 when undefined (one class only). Predictions as in
/// `accuracy`. Name "matthews_correlation".
TRAINLOOP_API std::shared_ptr<Metric> matthews_correlation();
/// exp of the mean per-token loss (cross-entropy), weighted by the number of
/// target elements. Name "perplexity".
TRAINLOOP_API std::shared_ptr<Metric> perplexity();
}  // namespace metrics

}  // namespace trainloop
