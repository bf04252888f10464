#include "trainloop/metrics.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/error.h"

namespace trainloop {
namespace {

// Every update below builds its result from whole-tensor ops and adds it to an
// accumulator on the outputs' device; nothing reads a value back, so a GPU
// pipeline never waits for the metric. Only compute() copies to the host.

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string shape_of(const torch::Tensor& tensor) {
  return fmt::format("[{}]", fmt::join(tensor.sizes(), ", "));
}

void check_batch(const std::string& metric, const torch::Tensor& outputs,
                 const torch::Tensor& targets) {
  if (!outputs.defined() || !targets.defined()) {
    throw Error(fmt::format("{}: outputs or targets are undefined tensors", metric));
  }
  if (outputs.dim() == 0 || targets.dim() == 0) {
    throw Error(fmt::format("{}: outputs {} and targets {}, expected a leading batch dimension",
                            metric, shape_of(outputs), shape_of(targets)));
  }
  if (outputs.size(0) != targets.size(0)) {
    throw Error(fmt::format("{}: outputs hold {} examples, targets {}", metric, outputs.size(0),
                            targets.size(0)));
  }
}

// Adding a CUDA batch into a CPU accumulator (or back) would copy, and so
// sync, on every update; a metric follows one device until reset().
void check_device(const std::string& metric, const torch::Tensor& accumulator,
                  const torch::Tensor& outputs) {
  if (accumulator.defined() && accumulator.device() != outputs.device()) {
    throw Error(fmt::format("{}: batch on {}, earlier batches on {}; reset() before moving", metric,
                            outputs.device().str(), accumulator.device().str()));
  }
}

torch::Tensor zeros_on(const torch::Tensor& outputs, torch::IntArrayRef sizes,
                       torch::ScalarType dtype) {
  return torch::zeros(sizes, torch::TensorOptions().dtype(dtype).device(outputs.device()));
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

// The value a metric's compute() last read, until its state changes. Reading
// it copies from the device (a sync on a GPU, a few ATen calls on the CPU),
// and at an epoch's end the progress line, the CSV row, TensorBoard and the
// history each ask for the same value.
class LastValue {
 public:
  template <class Read>
  double get(Read&& read) const {
    if (!value_) value_ = read();
    return *value_;
  }
  void forget() { value_.reset(); }

 private:
  mutable std::optional<double> value_;
};

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
                            metric, shape_of(outputs)));
  }
  if (targets.numel() != n) {
    throw Error(fmt::format("{}: targets {} for outputs {}, expected one class index each, [{}]",
                            metric, shape_of(targets), shape_of(outputs), n));
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

// The state every metric below keeps: a count of what was added and, once
// something was, an accumulator tensor on the device.
void save_accumulator(torch::serialize::OutputArchive& archive, const torch::Tensor& sum,
                      int64_t count) {
  archive.write("count", torch::tensor(count));
  if (sum.defined()) archive.write("sum", sum, /*is_buffer=*/true);
}

void load_accumulator(const std::string& metric, torch::serialize::InputArchive& archive,
                      torch::Tensor& sum, int64_t& count) {
  torch::Tensor saved_count;
  if (!archive.try_read("count", saved_count) || saved_count.numel() != 1) {
    throw Error(fmt::format("{}: the saved state has no count", metric));
  }
  torch::Tensor saved_sum;
  const bool has_sum = archive.try_read("sum", saved_sum, /*is_buffer=*/true);
  count = saved_count.item<int64_t>();
  if (count < 0 || has_sum != (count > 0)) {
    throw Error(fmt::format("{}: the saved state holds count {} {} an accumulator", metric, count,
                            has_sum ? "with" : "without"));
  }
  sum = has_sum ? saved_sum : torch::Tensor();
}

// Sums an accumulator (of `shape`, or undefined when nothing was added) and
// its count over every rank. A rank that has added nothing sends zeros, so
// every rank sends the same shape; the counts travel in the same tensor, in
// the accumulator's dtype (int64, or double: exact to 2^53).
void reduce_accumulator(const ReduceFunction& reduce, torch::Tensor& sum, int64_t& count,
                        std::vector<int64_t> shape, torch::ScalarType dtype) {
  int64_t numel = 1;
  for (const int64_t size : shape) numel *= size;
  const torch::Tensor local =
      sum.defined() ? sum.reshape({-1}).to(dtype) : torch::zeros({numel}, torch::dtype(dtype));
  torch::Tensor packed = torch::cat({local, torch::full({1}, count, local.options())});
  reduce(packed, ReduceOp::sum);
  const torch::Tensor total = packed.narrow(0, numel, 1).to(torch::kCPU, torch::kDouble);
  count = static_cast<int64_t>(total.item<double>());
  sum = count > 0 ? packed.narrow(0, 0, numel).reshape(shape).clone() : torch::Tensor();
}

// Batch loss weighted by examples ("loss") or by target elements
// ("perplexity", which then takes exp of the mean).
class MeanLoss final : public Metric {
 public:
  MeanLoss(std::string name, bool per_token) : name_(std::move(name)), per_token_(per_token) {}

  std::string name() const override { return name_; }

  void reset() override {
    value_.forget();
    sum_ = torch::Tensor();
    weight_ = 0;
  }

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& loss) override {
    value_.forget();
    check_batch(name_, outputs, targets);
    if (!loss.defined() || loss.numel() != 1) {
      throw Error(fmt::format("{}: batch loss {}, expected a scalar", name_,
                              loss.defined() ? shape_of(loss) : std::string("undefined")));
    }
    const int64_t weight = per_token_ ? targets.numel() : targets.size(0);
    // An empty batch has a NaN mean loss, which would poison the sum at weight 0.
    if (weight == 0) return;
    check_device(name_, sum_, outputs);
    if (!sum_.defined()) sum_ = zeros_on(outputs, {}, torch::kDouble);
    // add_ converts to the accumulator's double as it adds: the same sum as
    // a to(kDouble) first, without the extra tensor.
    sum_.add_(on_device(with_shape(without_history(loss), {}), sum_.device()), weight);
    weight_ += weight;
  }

  double compute() const override {
    return value_.get([&] {
      if (weight_ == 0) return kNaN;
      const double mean = sum_.item<double>() / static_cast<double>(weight_);
      return per_token_ ? std::exp(mean) : mean;
    });
  }

  std::shared_ptr<Metric> clone() const override {
    return std::make_shared<MeanLoss>(name_, per_token_);
  }

  void save(torch::serialize::OutputArchive& archive) const override {
    save_accumulator(archive, sum_, weight_);
  }
  void load(torch::serialize::InputArchive& archive) override {
    value_.forget();
    load_accumulator(name_, archive, sum_, weight_);
  }
  void all_reduce(const ReduceFunction& reduce) override {
    value_.forget();
    reduce_accumulator(reduce, sum_, weight_, {}, torch::kDouble);
  }

 private:
  LastValue value_;
  std::string name_;
  bool per_token_;
  torch::Tensor sum_;  // Σ batch loss × weight, double, on the outputs' device
  int64_t weight_ = 0;
};

class Accuracy final : public Metric {
 public:
  std::string name() const override { return "accuracy"; }

  void reset() override {
    value_.forget();
    correct_ = torch::Tensor();
    total_ = 0;
  }

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    value_.forget();
    check_batch(name(), outputs, targets);
    const Labels labels = labels_of(name(), outputs, targets);
    if (outputs.size(0) == 0) return;
    check_device(name(), correct_, outputs);
    if (!correct_.defined()) correct_ = zeros_on(outputs, {}, torch::kLong);
    correct_.add_(labels.predicted.eq(labels.actual).sum());
    total_ += outputs.size(0);
  }

  double compute() const override {
    return value_.get([&] {
      if (total_ == 0) return kNaN;
      return correct_.item<double>() / static_cast<double>(total_);
    });
  }

  std::shared_ptr<Metric> clone() const override { return std::make_shared<Accuracy>(); }

  void save(torch::serialize::OutputArchive& archive) const override {
    save_accumulator(archive, correct_, total_);
  }
  void load(torch::serialize::InputArchive& archive) override {
    value_.forget();
    load_accumulator(name(), archive, correct_, total_);
  }
  void all_reduce(const ReduceFunction& reduce) override {
    value_.forget();
    reduce_accumulator(reduce, correct_, total_, {}, torch::kLong);
  }

 private:
  LastValue value_;
  torch::Tensor correct_;  // int64 count on the outputs' device
  int64_t total_ = 0;
};

class TopKAccuracy final : public Metric {
 public:
  explicit TopKAccuracy(int64_t k) : k_(k), name_(fmt::format("top{}_accuracy", k)) {}

  std::string name() const override { return name_; }

  void reset() override {
    value_.forget();
    correct_ = torch::Tensor();
    total_ = 0;
  }

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    value_.forget();
    check_batch(name_, outputs, targets);
    if (outputs.dim() != 2) {
      throw Error(
          fmt::format("{}: outputs {}, expected [N, C] class scores", name_, shape_of(outputs)));
    }
    const int64_t n = outputs.size(0);
    const int64_t num_classes = outputs.size(1);
    if (targets.numel() != n) {
      throw Error(fmt::format("{}: targets {} for outputs {}, expected one class index each, [{}]",
                              name_, shape_of(targets), shape_of(outputs), n));
    }
    if (n == 0) return;
    check_device(name_, correct_, outputs);
    if (!correct_.defined()) correct_ = zeros_on(outputs, {}, torch::kLong);

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
    correct_.add_((rank.lt(k_) & in_range).sum());
    total_ += n;
  }

  double compute() const override {
    return value_.get([&] {
      if (total_ == 0) return kNaN;
      return correct_.item<double>() / static_cast<double>(total_);
    });
  }

  std::shared_ptr<Metric> clone() const override { return std::make_shared<TopKAccuracy>(k_); }

  void save(torch::serialize::OutputArchive& archive) const override {
    save_accumulator(archive, correct_, total_);
  }
  void load(torch::serialize::InputArchive& archive) override {
    value_.forget();
    load_accumulator(name_, archive, correct_, total_);
  }
  void all_reduce(const ReduceFunction& reduce) override {
    value_.forget();
    reduce_accumulator(reduce, correct_, total_, {}, torch::kLong);
  }

 private:
  LastValue value_;
  int64_t k_;
  std::string name_;
  torch::Tensor correct_;  // int64 count on the outputs' device
  int64_t total_ = 0;
};

class MatthewsCorrelation final : public Metric {
 public:
  std::string name() const override { return "matthews_correlation"; }

  void reset() override {
    value_.forget();
    confusion_ = torch::Tensor();
    num_classes_ = 0;
    total_ = 0;
  }

  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    value_.forget();
    check_batch(name(), outputs, targets);
    const Labels labels = labels_of(name(), outputs, targets);
    if (num_classes_ != 0 && labels.num_classes != num_classes_) {
      throw Error(fmt::format("{}: batch has {} classes, earlier batches {}", name(),
                              labels.num_classes, num_classes_));
    }
    if (outputs.size(0) == 0) return;
    check_device(name(), confusion_, outputs);
    const int64_t c = labels.num_classes;
    if (!confusion_.defined()) {
      confusion_ = zeros_on(outputs, {c, c}, torch::kDouble);
      num_classes_ = c;
    }
    // One-hot(targets)ᵀ · one-hot(predictions) is this batch's confusion
    // matrix from dense ops alone. bincount would read the largest index back
    // to size its result (a sync on CUDA), and scatter-adds are flagged
    // nondeterministic there. A target outside [0, C) matches no row, which
    // compute() notices from the total. Double counts stay exact to 2^53.
    const torch::Tensor classes = torch::arange(c, labels.actual.options());
    const torch::Tensor truth = labels.actual.unsqueeze(1).eq(classes).to(torch::kDouble);
    const torch::Tensor guess = labels.predicted.unsqueeze(1).eq(classes).to(torch::kDouble);
    confusion_.add_(truth.t().mm(guess));
    total_ += outputs.size(0);
  }

  double compute() const override {
    return value_.get([&] {
      if (total_ == 0) return kNaN;
      const torch::Tensor host = confusion_.to(torch::kCPU).contiguous();  // the one read
      const auto counts = host.accessor<double, 2>();
      const int64_t c = num_classes_;
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
      if (total != static_cast<double>(total_)) {
        throw Error(fmt::format("{}: {} of {} targets lie outside the classes 0..{}", name(),
                                static_cast<double>(total_) - total, total_, c - 1));
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
    });
  }

  std::shared_ptr<Metric> clone() const override { return std::make_shared<MatthewsCorrelation>(); }

  void save(torch::serialize::OutputArchive& archive) const override {
    save_accumulator(archive, confusion_, total_);
  }
  void load(torch::serialize::InputArchive& archive) override {
    value_.forget();
    load_accumulator(name(), archive, confusion_, total_);
    if (confusion_.defined() && (confusion_.dim() != 2 || confusion_.size(0) != confusion_.size(1))) {
      throw Error(fmt::format("{}: the saved confusion matrix is not square", name()));
    }
    num_classes_ = confusion_.defined() ? confusion_.size(0) : 0;
  }
  void all_reduce(const ReduceFunction& reduce) override {
    value_.forget();
    // A rank that has seen no batch does not know the class count yet.
    torch::Tensor classes = torch::full({1}, num_classes_, torch::kLong);
    reduce(classes, ReduceOp::max);
    const int64_t c = classes.item<int64_t>();
    if (c == 0) return;  // no rank has seen a batch
    if (num_classes_ != 0 && num_classes_ != c) {
      throw Error(fmt::format("{}: {} classes on this rank, {} on another", name(), num_classes_, c));
    }
    reduce_accumulator(reduce, confusion_, total_, {c, c}, torch::kDouble);
    num_classes_ = total_ > 0 ? c : 0;
  }

 private:
  LastValue value_;
  torch::Tensor confusion_;  // [C, C] double, rows true class, columns predicted
  int64_t num_classes_ = 0;
  int64_t total_ = 0;
};

}  // namespace

void Metric::save(torch::serialize::OutputArchive& /*archive*/) const {
  throw Error(fmt::format("metric {}: save() is not implemented, so a checkpoint inside an epoch "
                          "cannot hold its running value (override save and load)",
                          name()));
}

void Metric::load(torch::serialize::InputArchive& /*archive*/) {
  throw Error(fmt::format("metric {}: load() is not implemented", name()));
}

void Metric::all_reduce(const ReduceFunction& /*reduce*/) {
  throw Error(fmt::format("metric {}: all_reduce() is not implemented, so a data-parallel fit "
                          "cannot combine its value across processes (override all_reduce)",
                          name()));
}

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
