#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
  /// `save` and `load` in a metric of your own to checkpoint inside epochs,
  /// or derive it from `AccumulatingMetric`).
  virtual void save(torch::serialize::OutputArchive& archive) const;
  /// Replaces the accumulated state with what `save` wrote.
  virtual void load(torch::serialize::InputArchive& archive);
  /// Combines what every process of a data-parallel fit accumulated, so
  /// that afterwards `compute` on any of them gives the value over all their
  /// batches: sums the state tensors and counts with `reduce` (every process
  /// calls it in the same order with tensors of the same shapes, also one
  /// that has accumulated nothing). The loop calls it at the end of each
  /// phase. The built-in metrics (and `AccumulatingMetric`) implement it;
  /// the default throws `Error` naming the metric, and a data-parallel fit
  /// checks that at its start.
  virtual void all_reduce(const ReduceFunction& reduce);
};

/// A metric whose state is one running sum, a tensor on the device, and a
/// count of what it summed over (examples, tokens). It implements `reset`,
/// `compute` (NaN while the count is 0), `save`, `load` and `all_reduce`, so
/// a metric derived from it resumes inside epochs and runs data-parallel
/// with only `update` (which calls `accumulate`), `clone` and, unless its
/// value is the mean `sum / count`, `value` to write. The built-in metrics
/// are built on it.
///
/// Example, the mean absolute error of a regression:
///
///     class MeanAbsoluteError : public trainloop::AccumulatingMetric {
///      public:
///       MeanAbsoluteError() : AccumulatingMetric("mae", torch::kDouble) {}
///       void update(const torch::Tensor& outputs, const torch::Tensor& targets,
///                   const torch::Tensor& /*loss*/) override {
///         accumulate((outputs.detach() - targets).abs().sum(), targets.numel());
///       }
///       std::shared_ptr<trainloop::Metric> clone() const override {
///         return std::make_shared<MeanAbsoluteError>();
///       }
///     };
class TRAINLOOP_API AccumulatingMetric : public Metric {
 public:
  /// The name given to the constructor.
  std::string name() const override;
  /// Drops the sum and sets the count to 0.
  void reset() override;
  /// `value(sum, count)`, NaN while the count is 0. Kept until the state
  /// changes: the epoch's end asks for it several times (progress, CSV,
  /// TensorBoard, history), and each read of the device is a sync.
  double compute() const override;
  /// Writes the count under "count" and, once there is one, the sum under "sum".
  void save(torch::serialize::OutputArchive& archive) const override;
  /// Reads what `save` wrote; `Error` naming the metric when the count is
  /// missing or negative, the sum missing (count > 0) or present (count 0),
  /// or the sum of another dtype or shape.
  void load(torch::serialize::InputArchive& archive) override;
  /// Sums the sum and the count over every process in one `reduce` (the
  /// count travels in the sum's dtype: exact to 2^53 in double). A process
  /// that has accumulated nothing sends zeros. With a size -1 in the shape,
  /// one `reduce` (max) before it agrees the size; `Error` on a process whose
  /// sum has another.
  void all_reduce(const ReduceFunction& reduce) override;

 protected:
  /// `name` as `Metric::name`. The running sum is a tensor of `dtype`
  /// (`torch::kLong` for exact counts, `torch::kDouble` for sums of values)
  /// and of `shape` (by default a scalar); a size -1 is the first batch's,
  /// e.g. a class count read from the outputs.
  AccumulatingMetric(std::string name, torch::ScalarType dtype,
                     std::vector<int64_t> shape = {});

  /// Adds `batch_sum × scale` to the running sum and `count` to the count,
  /// on the device, reading nothing back. `batch_sum` has the sum's shape and
  /// lies on the device of the batches before it since `reset` (`Error`
  /// otherwise: a copy between devices at every batch would sync). A
  /// `count` of 0 adds nothing (`batch_sum` is not read: an empty batch's
  /// mean loss is NaN).
  void accumulate(const torch::Tensor& batch_sum, int64_t count,
                  const torch::Scalar& scale = 1);

  /// The metric's value from the running sum (on the device) and the count
  /// (> 0); reading the sum (`item`, `to(torch::kCPU)`) is the one sync.
  /// The default is the mean, `sum.item<double>() / count`.
  virtual double value(const torch::Tensor& sum, int64_t count) const;

  /// The running sum: undefined while the count is 0.
  const torch::Tensor& sum() const { return sum_; }
  /// What the sum was taken over (examples, tokens) since `reset`.
  int64_t count() const { return count_; }

 private:
  std::string name_;
  torch::ScalarType dtype_;
  std::vector<int64_t> shape_;
  torch::Tensor sum_;
  int64_t count_ = 0;
  mutable std::optional<double> value_;  // what compute() read, until the state changes
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
