#include "trainloop/metrics.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "error_text.h"
#include "trainloop/error.h"

namespace trainloop {
namespace {

// Every update below builds its result from whole-tensor ops and adds it to an
// accumulator on the outputs' device; nothing reads a value back, so a GPU
// pipeline never waits for the metric. Only compute() copies to the host.

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void check_batch(const std::string& metric, const torch::Tensor& outputs,
                 const torch::Tensor& targets) {
  if (!outputs.defined() || !targets.defined()) {
    throw Error(fmt::format("{}: outputs or targets are undefined tensors", metric));
  }
  if (outputs.dim() == 0 || targets.dim() == 0) {
    throw Error(fmt::format("{}: outputs {} and targets {}, expected a leading batch dimension",
                            metric, trainloop::detail::sizes_text(outputs.sizes()), trainloop::detail::sizes_text(targets.sizes())));
  }
  if (outputs.size(0) != targets.size(0)) {
    throw Error(fmt::format("{}: outputs hold {} examples, targets {}", metric, outputs.size(0),
                            targets.size(0)));
  }
}

// The helpers below return their input when there is nothing to do. Each
// ATen call costs about a microsecond on the CPU even when it changes
// nothing (detach of a tensor without history, reshape to its own shape,
// to() its own dtype), and on small models those calls were the largest
// part of what fit costs over a hand-written loop (bench/RESULTS.md).
torch::Tensor without_history(const torch::Tensor& tensor) {
  return tensor.requires_grad() ? tensor.detach() : tensor;
}

torch::Tensor with_shape(const torch::Tensor& tensor, torch::IntArrayRef sizes) {
  return tensor.sizes() == sizes ? tensor : tensor.reshape(sizes);
}

torch::Tensor on_device(const torch::Tensor& tensor, const torch::Device& device) {
  return tensor.device() == device ? tensor : tensor.to(device);
}

torch::Tensor as_long(const torch::Tensor& tensor) {
  return tensor.scalar_type() == torch::kLong ? tensor : tensor.to(torch::kLong);
}

// Class predictions and integer targets of one batch, both [N] int64 on the
// outputs' device, by the rules documented for metrics::accuracy.
struct Labels {
  torch::Tensor predicted;
  torch::Tensor actual;
  int64_t num_classes;
};

Labels labels_of(const std::string& metric, const torch::Tensor& outputs,
                 const torch::Tensor& targets) {
  const int64_t n = outputs.size(0);
  const bool binary = outputs.dim() == 1 || (outputs.dim() == 2 && outputs.size(1) == 1);
  if (!binary && outputs.dim() != 2) {
    throw Error(fmt::format("{}: outputs {}, expected [N, C] class scores or [N] / [N, 1] logits",
                            metric, trainloop::detail::sizes_text(outputs.sizes())));
  }
  if (targets.numel() != n) {
    throw Error(fmt::format("{}: targets {} for outputs {}, expected one class index each, [{}]",
                            metric, trainloop::detail::sizes_text(targets.sizes()), trainloop::detail::sizes_text(outputs.sizes()), n));
  }
  torch::Tensor actual = on_device(with_shape(without_history(targets), {n}), outputs.device());
  if (binary) {
    // Float 0/1 targets may carry label smoothing (0.05 / 0.95); thresholding at
    // 0.5 reads them as the logits are read at 0, where truncation would not.
    if (actual.is_floating_point()) actual = actual.gt(0.5);
    return {as_long(with_shape(without_history(outputs), {n}).gt(0)), as_long(actual), 2};
  }
  return {without_history(outputs).argmax(1), as_long(actual), outputs.size(1)};
}

std::string sizes_text(const std::vector<int64_t>& sizes) {
  return fmt::format("[{}]", fmt::join(sizes, ", "));
}

// Whether `sizes` are those of `shape`, where a -1 in `shape` matches any size.
bool fits(torch::IntArrayRef sizes, const std::vector<int64_t>& shape) {
  if (sizes.size() != shape.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] != -1 && shape[i] != sizes[i]) return false;
  }
  return true;
}

}  // namespace

void Metric::save(torch::serialize::OutputArchive& /*archive*/) const {
  throw Error(fmt::format("metric {}: save() is not implemented, so a checkpoint inside an epoch "
                          "cannot hold its running value (override save and load, or derive from "
                          "AccumulatingMetric)",
                          name()));
}

void Metric::load(torch::serialize::InputArchive& /*archive*/) {
  throw Error(fmt::format("metric {}: load() is not implemented", name()));
}

void Metric::all_reduce(const ReduceFunction& /*reduce*/) {
  throw Error(fmt::format("metric {}: all_reduce() is not implemented, so a data-parallel fit "
                          "cannot combine its value across processes (override all_reduce, or "
                          "derive from AccumulatingMetric)",
                          name()));
}

AccumulatingMetric::AccumulatingMetric(std::string name, torch::ScalarType dtype,
                                       std::vector<int64_t> shape)
    : name_(std::move(name)), dtype_(dtype), shape_(std::move(shape)) {
  for (const int64_t size : shape_) {
    if (size < -1) {
      throw Error(fmt::format("{}: sum shape {}, expected sizes >= 0 or -1", name_,
                              sizes_text(shape_)));
    }
  }
}

std::string AccumulatingMetric::name() const { return name_; }

void AccumulatingMetric::reset() {
  value_.reset();
  sum_ = torch::Tensor();
  count_ = 0;
}

// Checks what the host knows (device, sizes) and adds on the device: nothing
// here reads a value back, so a GPU pipeline never waits for the metric.
void AccumulatingMetric::accumulate(const torch::Tensor& batch_sum, int64_t count,
                                    const torch::Scalar& scale) {
  if (count < 0) throw Error(fmt::format("{}: a batch counted {}, expected >= 0", name_, count));
  if (count == 0) return;
  if (!batch_sum.defined()) throw Error(fmt::format("{}: the batch's sum is undefined", name_));
  if (!sum_.defined()) {
    if (!fits(batch_sum.sizes(), shape_)) {
      throw Error(fmt::format("{}: batch sum {}, expected {}", name_, trainloop::detail::sizes_text(batch_sum.sizes()),
                              sizes_text(shape_)));
    }
    sum_ = torch::zeros(batch_sum.sizes(),
                        torch::TensorOptions().dtype(dtype_).device(batch_sum.device()));
  } else if (batch_sum.device() != sum_.device()) {
    // Adding a CUDA batch into a CPU sum (or back) would copy, and so sync,
    // on every update; a metric follows one device until reset().
    throw Error(fmt::format("{}: batch on {}, earlier batches on {}; reset() before moving", name_,
                            batch_sum.device().str(), sum_.device().str()));
  } else if (batch_sum.sizes() != sum_.sizes()) {
    throw Error(fmt::format("{}: batch sum {}, earlier batches {}", name_, trainloop::detail::sizes_text(batch_sum.sizes()),
                            trainloop::detail::sizes_text(sum_.sizes())));
  }
  value_.reset();
  // add_ converts to the sum's dtype as it adds: no extra tensor per batch.
  sum_.add_(batch_sum, scale);
  count_ += count;
}

double AccumulatingMetric::value(const torch::Tensor& sum, int64_t count) const {
  return sum.item<double>() / static_cast<double>(count);
}

double AccumulatingMetric::compute() const {
  if (!value_) value_ = count_ == 0 ? kNaN : value(sum_, count_);
  return *value_;
}

void AccumulatingMetric::save(torch::serialize::OutputArchive& archive) const {
  archive.write("count", torch::tensor(count_));
  if (sum_.defined()) archive.write("sum", sum_, /*is_buffer=*/true);
}

void AccumulatingMetric::load(torch::serialize::InputArchive& archive) {
  torch::Tensor saved_count;
  if (!archive.try_read("count", saved_count) || saved_count.numel() != 1) {
    throw Error(fmt::format("{}: the saved state has no count", name_));
  }
  torch::Tensor saved_sum;
  const bool has_sum = archive.try_read("sum", saved_sum, /*is_buffer=*/true);
  const int64_t count = saved_count.item<int64_t>();
  if (count < 0 || has_sum != (count > 0)) {
    throw Error(fmt::format("{}: the saved state holds count {} {} an accumulator", name_, count,
                            has_sum ? "with" : "without"));
  }
  if (has_sum && (saved_sum.scalar_type() != dtype_ || !fits(saved_sum.sizes(), shape_))) {
    throw Error(fmt::format("{}: the saved sum is {} {}, expected {} {}", name_,
                            c10::toString(saved_sum.scalar_type()), trainloop::detail::sizes_text(saved_sum.sizes()),
                            c10::toString(dtype_), sizes_text(shape_)));
  }
  value_.reset();
  count_ = count;
  sum_ = has_sum ? saved_sum : torch::Tensor();
}

void AccumulatingMetric::all_reduce(const ReduceFunction& reduce) {
  value_.reset();
  std::vector<int64_t> shape = shape_;
  if (std::find(shape.begin(), shape.end(), -1) != shape.end()) {
    // A process that has seen no batch does not know the sizes the first
    // batch sets; -1 (its part) loses to any size in the max.
    torch::Tensor sizes = torch::tensor(sum_.defined() ? sum_.sizes().vec() : shape, torch::kLong);
    reduce(sizes, ReduceOp::max);
    shape.assign(sizes.data_ptr<int64_t>(), sizes.data_ptr<int64_t>() + sizes.numel());
    if (std::find(shape.begin(), shape.end(), -1) != shape.end()) return;  // no process has a sum
    if (sum_.defined() && sum_.sizes() != torch::IntArrayRef(shape)) {
      throw Error(fmt::format("{}: sum {} on this process, {} on another", name_, trainloop::detail::sizes_text(sum_.sizes()),
                              sizes_text(shape)));
    }
  }
  // The count travels in the sum's tensor, in its dtype (int64, or double:
  // exact to 2^53), so one reduce carries both; a process that has added
  // nothing sends zeros of the agreed shape.
  int64_t numel = 1;
  for (const int64_t size : shape) numel *= size;
  const torch::Tensor local =
      sum_.defined() ? sum_.reshape({-1}) : torch::zeros({numel}, torch::dtype(dtype_));
  torch::Tensor packed = torch::cat({local, torch::full({1}, count_, local.options())});
  reduce(packed, ReduceOp::sum);
  const torch::Tensor total = packed.narrow(0, numel, 1).to(torch::kCPU, torch::kDouble);
  count_ = static_cast<int64_t>(total.item<double>());
  sum_ = count_ > 0 ? packed.narrow(0, 0, numel).reshape(shape).clone() : torch::Tensor();
}

namespace {

// Batch loss weighted by examples ("loss") or by target elements
// ("perplexity", which then takes exp of the mean).
class MeanLoss final : public AccumulatingMetric {
 public:
  MeanLoss(std::string name, bool per_token)
      : AccumulatingMetric(std::move(name), torch::kDouble), per_token_(per_token) {}

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& loss) override {
    check_batch(name(), outputs, targets);
    if (!loss.defined() || loss.numel() != 1) {
      throw Error(fmt::format("{}: batch loss {}, expected a scalar", name(),
                              loss.defined() ? trainloop::detail::sizes_text(loss.sizes()) : std::string("undefined")));
    }
    const int64_t weight = per_token_ ? targets.numel() : targets.size(0);
    // An empty batch has a NaN mean loss, which would poison the sum at weight 0.
    if (weight == 0) return;
    accumulate(on_device(with_shape(without_history(loss), {}), outputs.device()), weight, weight);
  }

  std::shared_ptr<Metric> clone() const override {
    return std::make_shared<MeanLoss>(name(), per_token_);
  }

 private:
  // The sum is Σ batch loss × weight, in double.
  double value(const torch::Tensor& sum, int64_t count) const override {
    const double mean = AccumulatingMetric::value(sum, count);
    return per_token_ ? std::exp(mean) : mean;
  }

  bool per_token_;
};

// The sum is the int64 count of correct predictions.
class Accuracy final : public AccumulatingMetric {
 public:
  Accuracy() : AccumulatingMetric("accuracy", torch::kLong) {}

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    check_batch(name(), outputs, targets);
    const Labels labels = labels_of(name(), outputs, targets);
    if (outputs.size(0) == 0) return;
    accumulate(labels.predicted.eq(labels.actual).sum(), outputs.size(0));
  }

  std::shared_ptr<Metric> clone() const override { return std::make_shared<Accuracy>(); }
};

// The sum is the int64 count of targets among the k highest scores.
class TopKAccuracy final : public AccumulatingMetric {
 public:
  explicit TopKAccuracy(int64_t k)
      : AccumulatingMetric(fmt::format("top{}_accuracy", k), torch::kLong), k_(k) {}

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    check_batch(name(), outputs, targets);
    if (outputs.dim() != 2) {
      throw Error(
          fmt::format("{}: outputs {}, expected [N, C] class scores", name(), trainloop::detail::sizes_text(outputs.sizes())));
    }
    const int64_t n = outputs.size(0);
    const int64_t num_classes = outputs.size(1);
    if (targets.numel() != n) {
      throw Error(fmt::format("{}: targets {} for outputs {}, expected one class index each, [{}]",
                              name(), trainloop::detail::sizes_text(targets.sizes()), trainloop::detail::sizes_text(outputs.sizes()), n));
    }
    if (n == 0) return;

    const torch::Tensor scores = outputs.detach();
    const torch::Tensor actual =
        targets.detach().reshape({n, 1}).to(outputs.device(), torch::kLong);
    // gather's bounds check is a device-side assert on a GPU, fatal to the
    // process; clamped, an out-of-range target just counts as a miss, as in
    // accuracy.
    const torch::Tensor in_range = (actual.ge(0) & actual.lt(num_classes)).reshape({n});
    const torch::Tensor index = actual.clamp(0, num_classes - 1);
    const torch::Tensor target_score = scores.gather(1, index);
    const torch::Tensor classes = torch::arange(num_classes, index.options());
    // The target's rank: classes scoring higher, plus equal scores with a
    // higher index, as scikit-learn's reversed stable argsort orders them.
    // With k >= C every rank is below k, scikit-learn's score of 1.
    const torch::Tensor ahead =
        scores.gt(target_score) | (scores.eq(target_score) & classes.gt(index));
    const torch::Tensor rank = ahead.sum(1, /*keepdim=*/false, torch::kLong);
    accumulate((rank.lt(k_) & in_range).sum(), n);
  }

  std::shared_ptr<Metric> clone() const override { return std::make_shared<TopKAccuracy>(k_); }

 private:
  int64_t k_;
};

// The sum is the [C, C] confusion matrix in double, rows true class, columns
// predicted; C is the first batch's class count.
class MatthewsCorrelation final : public AccumulatingMetric {
 public:
  MatthewsCorrelation() : AccumulatingMetric("matthews_correlation", torch::kDouble, {-1, -1}) {}

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    check_batch(name(), outputs, targets);
    const Labels labels = labels_of(name(), outputs, targets);
    if (num_classes() != 0 && labels.num_classes != num_classes()) {
      throw Error(fmt::format("{}: batch has {} classes, earlier batches {}", name(),
                              labels.num_classes, num_classes()));
    }
    if (outputs.size(0) == 0) return;
    // One-hot(targets)ᵀ · one-hot(predictions) is this batch's confusion
    // matrix from dense ops alone. bincount would read the largest index back
    // to size its result (a sync on CUDA), and scatter-adds are flagged
    // nondeterministic there. A target outside [0, C) matches no row, which
    // value() notices from the count. Double counts stay exact to 2^53.
    const torch::Tensor classes = torch::arange(labels.num_classes, labels.actual.options());
    const torch::Tensor truth = labels.actual.unsqueeze(1).eq(classes).to(torch::kDouble);
    const torch::Tensor guess = labels.predicted.unsqueeze(1).eq(classes).to(torch::kDouble);
    accumulate(truth.t().mm(guess), outputs.size(0));
  }

  std::shared_ptr<Metric> clone() const override { return std::make_shared<MatthewsCorrelation>(); }

  void load(torch::serialize::InputArchive& archive) override {
    AccumulatingMetric::load(archive);
    if (sum().defined() && sum().size(0) != sum().size(1)) {
      throw Error(fmt::format("{}: the saved confusion matrix is not square", name()));
    }
  }

 private:
  int64_t num_classes() const { return sum().defined() ? sum().size(0) : 0; }

  double value(const torch::Tensor& sum, int64_t count) const override {
    const torch::Tensor host = sum.to(torch::kCPU).contiguous();  // the one read
    const auto counts = host.accessor<double, 2>();
    const int64_t c = host.size(0);
    std::vector<double> true_counts(c, 0.0);
    std::vector<double> predicted_counts(c, 0.0);
    double correct = 0.0;
    double total = 0.0;
    for (int64_t i = 0; i < c; ++i) {
      for (int64_t j = 0; j < c; ++j) {
        true_counts[i] += counts[i][j];
        predicted_counts[j] += counts[i][j];
        total += counts[i][j];
      }
      correct += counts[i][i];
    }
    if (total != static_cast<double>(count)) {
      throw Error(fmt::format("{}: {} of {} targets lie outside the classes 0..{}", name(),
                              static_cast<double>(count) - total, count, c - 1));
    }
    // scikit-learn's matthews_corrcoef, the multiclass R_K statistic.
    double true_dot_predicted = 0.0;
    double true_squared = 0.0;
    double predicted_squared = 0.0;
    for (int64_t k = 0; k < c; ++k) {
      true_dot_predicted += true_counts[k] * predicted_counts[k];
      true_squared += true_counts[k] * true_counts[k];
      predicted_squared += predicted_counts[k] * predicted_counts[k];
    }
    const double cov_ytyp = correct * total - true_dot_predicted;
    const double cov_ypyp = total * total - predicted_squared;
    const double cov_ytyt = total * total - true_squared;
    const double denominator = cov_ytyt * cov_ypyp;
    if (denominator == 0.0) return 0.0;  // one class only: undefined, reported 0
    return cov_ytyp / std::sqrt(denominator);
  }
};

}  // namespace

namespace metrics {

std::shared_ptr<Metric> loss() { return std::make_shared<MeanLoss>("loss", false); }

std::shared_ptr<Metric> accuracy() { return std::make_shared<Accuracy>(); }

std::shared_ptr<Metric> top_k_accuracy(int64_t k) {
  if (k < 1) throw Error(fmt::format("top_k_accuracy: k = {}, expected k >= 1", k));
  return std::make_shared<TopKAccuracy>(k);
}

std::shared_ptr<Metric> matthews_correlation() { return std::make_shared<MatthewsCorrelation>(); }

std::shared_ptr<Metric> perplexity() { return std::make_shared<MeanLoss>("perplexity", true); }

}  // namespace metrics
}  // namespace trainloop
