#include "trainloop/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/error.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::AccumulatingMetric;
using trainloop::Error;
using trainloop::Metric;
using trainloop::ReduceOp;
namespace metrics = trainloop::metrics;

// Tolerances. Counting metrics see the same integers as scikit-learn, so only
// the final division or MCC's square root can differ: 1e-9 absolute. Loss and
// perplexity are fed float32 batch losses, as a training loop is, and
// compared with float64 means over every example: 1e-6 relative.
constexpr double kCountTolerance = 1e-9;
constexpr double kLossRelativeTolerance = 1e-6;

nlohmann::json load_goldens() {
  const std::string path = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/metric_goldens.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

// Float values become float32 (the JSON holds two-decimal logits that narrow
// to the float32 values the script used), integers int64.
torch::Tensor tensor_from(const nlohmann::json& values, const nlohmann::json& shape) {
  const auto sizes = shape.get<std::vector<int64_t>>();
  const bool floating = !values.empty() && values.front().is_number_float();
  const torch::Tensor flat = torch::tensor(values.get<std::vector<double>>(), torch::kDouble);
  return flat.reshape(sizes).to(floating ? torch::kFloat : torch::kLong);
}

std::shared_ptr<Metric> metric_named(const std::string& name) {
  static const std::map<std::string, std::function<std::shared_ptr<Metric>()>> factories = {
      {"loss", metrics::loss},
      {"accuracy", metrics::accuracy},
      {"top1_accuracy", [] { return metrics::top_k_accuracy(1); }},
      {"top2_accuracy", [] { return metrics::top_k_accuracy(2); }},
      {"top5_accuracy", [] { return metrics::top_k_accuracy(5); }},
      {"matthews_correlation", metrics::matthews_correlation},
      {"perplexity", metrics::perplexity},
  };
  return factories.at(name)();
}

void stream(Metric& metric, const nlohmann::json& fixture) {
  for (const auto& batch : fixture["batches"]) {
    metric.update(tensor_from(batch["outputs"], batch["outputs_shape"]),
                  tensor_from(batch["targets"], batch["targets_shape"]),
                  torch::scalar_tensor(batch["loss"].get<double>(), torch::kFloat));
  }
}

torch::Tensor scores(std::vector<float> values, int64_t rows) {
  return torch::tensor(values).reshape({rows, -1});
}

torch::Tensor labels(std::vector<int64_t> values) { return torch::tensor(values); }

const torch::Tensor kNoLoss;

TEST(MetricsTest, MatchesScikitLearnGoldens) {
  const nlohmann::json goldens = load_goldens();
  int checked = 0;
  for (const auto& fixture : goldens["fixtures"]) {
    for (const auto& [name, expected_json] : fixture["expected"].items()) {
      SCOPED_TRACE(fixture["name"].get<std::string>() + " / " + name);
      const auto metric = metric_named(name);
      EXPECT_EQ(metric->name(), name);
      stream(*metric, fixture);
      const double expected = expected_json.get<double>();
      if (name == "loss" || name == "perplexity") {
        EXPECT_NEAR(metric->compute(), expected, kLossRelativeTolerance * std::abs(expected));
      } else {
        EXPECT_NEAR(metric->compute(), expected, kCountTolerance);
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 29);  // every fixture × metric in the JSON was compared
}

TEST(MetricsTest, TiesAtTheTopSplitAccuracyFromTopOne) {
  // Classes 1 and 3 share the maximum: argmax picks 1, scikit-learn's top-1 picks 3.
  const torch::Tensor outputs = scores({0.0f, 2.0f, 1.0f, 2.0f}, 1);
  auto accuracy = metrics::accuracy();
  auto top1 = metrics::top_k_accuracy(1);
  accuracy->update(outputs, labels({3}), kNoLoss);
  top1->update(outputs, labels({3}), kNoLoss);
  EXPECT_EQ(accuracy->compute(), 0.0);
  EXPECT_EQ(top1->compute(), 1.0);
}

TEST(MetricsTest, ComputeIsNanBeforeAnyUpdate) {
  for (const auto& metric : {metrics::loss(), metrics::accuracy(), metrics::top_k_accuracy(3),
                             metrics::matthews_correlation(), metrics::perplexity()}) {
    SCOPED_TRACE(metric->name());
    EXPECT_TRUE(std::isnan(metric->compute()));
  }
}

TEST(MetricsTest, NamesFollowTheLogColumns) {
  EXPECT_EQ(metrics::loss()->name(), "loss");
  EXPECT_EQ(metrics::accuracy()->name(), "accuracy");
  EXPECT_EQ(metrics::top_k_accuracy(5)->name(), "top5_accuracy");
  EXPECT_EQ(metrics::matthews_correlation()->name(), "matthews_correlation");
  EXPECT_EQ(metrics::perplexity()->name(), "perplexity");
}

TEST(MetricsTest, ResetForgetsEverything) {
  const torch::Tensor outputs = scores({2.0f, 0.0f, 0.0f, 2.0f, 2.0f, 0.0f}, 3);
  for (const auto& metric : {metrics::loss(), metrics::accuracy(), metrics::top_k_accuracy(1),
                             metrics::matthews_correlation(), metrics::perplexity()}) {
    SCOPED_TRACE(metric->name());
    metric->update(outputs, labels({1, 0, 1}), torch::scalar_tensor(3.0));
    metric->reset();
    EXPECT_TRUE(std::isnan(metric->compute()));
    metric->update(outputs, labels({0, 1, 0}), torch::scalar_tensor(0.5));
    const double expected = metric->name() == "loss"         ? 0.5
                            : metric->name() == "perplexity" ? std::exp(0.5)
                                                             : 1.0;
    EXPECT_NEAR(metric->compute(), expected, 1e-12);
  }
}

// compute() keeps the value it read until the state changes; every change
// (update, load, all_reduce, reset) must show in the next compute().
TEST(MetricsTest, ComputeFollowsEveryChangeOfState) {
  const torch::Tensor outputs = scores({2.0f, 0.0f, 0.0f, 2.0f, 2.0f, 0.0f}, 3);
  const torch::Tensor first = labels({0, 1, 0});   // all three right
  const torch::Tensor second = labels({1, 0, 1});  // all three wrong
  // A sum doubles the count that all_reduce packs last and leaves the
  // state's sum as it is: a mean or a fraction halves. A max (the class
  // count) is left alone.
  const trainloop::ReduceFunction double_count = [](torch::Tensor& packed, trainloop::ReduceOp op) {
    if (op == trainloop::ReduceOp::sum) packed.narrow(0, packed.numel() - 1, 1).mul_(2);
  };
  const std::vector<std::function<std::shared_ptr<Metric>()>> factories = {
      metrics::loss, metrics::accuracy, [] { return metrics::top_k_accuracy(1); },
      metrics::matthews_correlation, metrics::perplexity};
  for (const auto& make : factories) {
    const auto metric = make();
    SCOPED_TRACE(metric->name());
    metric->update(outputs, first, torch::scalar_tensor(1.0));
    const double after_first = metric->compute();
    metric->update(outputs, second, torch::scalar_tensor(3.0));
    const double after_both = metric->compute();
    const auto fresh = make();
    fresh->update(outputs, first, torch::scalar_tensor(1.0));
    fresh->update(outputs, second, torch::scalar_tensor(3.0));
    EXPECT_NE(after_first, after_both);
    EXPECT_EQ(after_both, fresh->compute());

    torch::serialize::OutputArchive saved;
    metric->save(saved);
    std::ostringstream bytes;
    saved.save_to(bytes);
    const auto loaded = make();
    loaded->update(outputs, first, torch::scalar_tensor(1.0));
    EXPECT_EQ(loaded->compute(), after_first);
    torch::serialize::InputArchive archive;
    std::istringstream in(bytes.str());
    archive.load_from(in);
    loaded->load(archive);
    EXPECT_EQ(loaded->compute(), after_both);

    metric->all_reduce(double_count);
    if (metric->name() == "matthews_correlation") {
      // Its confusion matrix now holds half the count: the check in compute runs again.
      EXPECT_THAT([&] { metric->compute(); },
                  ThrowsMessage<Error>(HasSubstr("targets lie outside the classes")));
    } else if (metric->name() == "perplexity") {
      EXPECT_NEAR(metric->compute(), std::exp(std::log(after_both) / 2), 1e-12);
    } else {
      EXPECT_NEAR(metric->compute(), after_both / 2, 1e-12);
    }
    metric->reset();
    EXPECT_TRUE(std::isnan(metric->compute()));
  }
}

TEST(MetricsTest, CloneIsFreshWithTheSameSettings) {
  auto top2 = metrics::top_k_accuracy(2);
  const torch::Tensor outputs = scores({3.0f, 2.0f, 1.0f, 0.0f}, 1);
  top2->update(outputs, labels({3}), kNoLoss);
  EXPECT_EQ(top2->compute(), 0.0);

  const auto copy = top2->clone();
  EXPECT_EQ(copy->name(), "top2_accuracy");
  EXPECT_TRUE(std::isnan(copy->compute()));
  copy->update(outputs, labels({1}), kNoLoss);  // second place: a top-2 hit
  EXPECT_EQ(copy->compute(), 1.0);
  EXPECT_EQ(top2->compute(), 0.0);  // the original is untouched

  const auto perplexity = metrics::perplexity()->clone();
  EXPECT_EQ(perplexity->name(), "perplexity");
  perplexity->update(outputs, labels({0}), torch::scalar_tensor(1.0));
  EXPECT_NEAR(perplexity->compute(), std::exp(1.0), 1e-12);
}

TEST(MetricsTest, LossWeightsByExamplesPerplexityByTokens) {
  auto loss = metrics::loss();
  auto perplexity = metrics::perplexity();
  // Batch 1: 2 sequences of 3 tokens, mean loss 1. Batch 2: 1 sequence of 2 tokens, loss 4.
  const torch::Tensor outputs1 = torch::zeros({2, 5, 3});
  const torch::Tensor outputs2 = torch::zeros({1, 5, 2});
  for (const auto& metric : {loss, perplexity}) {
    metric->update(outputs1, torch::zeros({2, 3}, torch::kLong), torch::scalar_tensor(1.0f));
    metric->update(outputs2, torch::zeros({1, 2}, torch::kLong), torch::scalar_tensor(4.0f));
  }
  EXPECT_NEAR(loss->compute(), (2 * 1.0 + 1 * 4.0) / 3, 1e-12);
  EXPECT_NEAR(perplexity->compute(), std::exp((6 * 1.0 + 2 * 4.0) / 8), 1e-12);
}

TEST(MetricsTest, EmptyBatchChangesNothing) {
  auto loss = metrics::loss();
  auto accuracy = metrics::accuracy();
  loss->update(torch::zeros({2, 3}), labels({0, 0}), torch::scalar_tensor(2.0));
  accuracy->update(scores({1.0f, 0.0f, 0.0f, 1.0f}, 2), labels({0, 0}), kNoLoss);
  // The mean over an empty batch is NaN; weighted by zero it must not leak in.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  loss->update(torch::zeros({0, 3}), torch::zeros({0}, torch::kLong), torch::scalar_tensor(nan));
  accuracy->update(torch::zeros({0, 2}), torch::zeros({0}, torch::kLong), kNoLoss);
  EXPECT_EQ(loss->compute(), 2.0);
  EXPECT_EQ(accuracy->compute(), 0.5);
}

TEST(MetricsTest, BinaryReadsLogitsAtZeroAndSoftTargetsAtHalf) {
  auto accuracy = metrics::accuracy();
  // Logit 0 is not positive; targets 0.1 / 0.9 are smoothed 0 / 1.
  accuracy->update(torch::tensor({-1.0f, 0.0f, 0.5f, 2.0f}),
                   torch::tensor({0.1f, 0.1f, 0.9f, 0.1f}), kNoLoss);
  EXPECT_EQ(accuracy->compute(), 0.75);
}

TEST(MetricsTest, TopKBeyondTheClassCountScoresEverything) {
  auto top5 = metrics::top_k_accuracy(5);
  top5->update(scores({0.0f, 1.0f, 2.0f, 5.0f, 4.0f, 3.0f}, 2), labels({0, 2}), kNoLoss);
  EXPECT_EQ(top5->compute(), 1.0);  // scikit-learn warns and scores 1.0
}

TEST(MetricsTest, TopKCountsOutOfRangeTargetsAsMisses) {
  auto top1 = metrics::top_k_accuracy(1);
  top1->update(scores({0.0f, 1.0f, 2.0f, 1.0f, 0.0f, 0.0f}, 2), labels({7, 0}), kNoLoss);
  EXPECT_EQ(top1->compute(), 0.5);
}

TEST(MetricsTest, UpdatesKeepNoGradientHistory) {
  const torch::Tensor outputs = torch::randn({4, 3}, torch::requires_grad());
  const torch::Tensor loss = outputs.logsumexp(1).mean();
  auto metric = metrics::loss();
  metric->update(outputs, labels({0, 1, 2, 0}), loss);
  loss.backward();  // the graph is still the training loop's to use
  EXPECT_NEAR(metric->compute(), loss.item<double>(), 1e-6);
}

// update() skips the conversions a batch does not need; the ones it does
// need still happen: a [1] or float64 loss, [N, 1] int32 targets, and a loss
// that carries gradient history (which must not reach the accumulator).
TEST(MetricsTest, UpdatesConvertOnlyWhatNeedsIt) {
  auto loss = metrics::loss();
  loss->update(torch::zeros({2, 3}), labels({0, 0}), torch::tensor({1.5f}));
  loss->update(torch::zeros({1, 3}), labels({0}), torch::scalar_tensor(3.0, torch::kDouble));
  const torch::Tensor weight = torch::tensor(0.25f, torch::requires_grad());
  loss->update(torch::zeros({1, 3}), labels({0}), weight * 4);
  EXPECT_DOUBLE_EQ(loss->compute(), (2 * 1.5 + 3.0 + 1.0) / 4);
  torch::serialize::OutputArchive archive;
  loss->save(archive);
  torch::Tensor sum;
  std::ostringstream bytes;
  archive.save_to(bytes);
  std::istringstream in(bytes.str());
  torch::serialize::InputArchive read;
  read.load_from(in);
  ASSERT_TRUE(read.try_read("sum", sum, /*is_buffer=*/true));
  EXPECT_FALSE(sum.requires_grad());
  EXPECT_EQ(sum.scalar_type(), torch::kDouble);

  auto accuracy = metrics::accuracy();
  accuracy->update(scores({0.0f, 1.0f, 2.0f, 1.0f, 0.0f, 0.0f}, 2),
                   torch::tensor({2, 1}, torch::kInt).reshape({2, 1}), kNoLoss);
  EXPECT_EQ(accuracy->compute(), 0.5);
}

// A meta tensor has a shape but no values: reading one on the host throws.
// update() running through on meta inputs shows it never reads values back,
// which is what keeps a GPU training loop from waiting on its metrics.
TEST(MetricsTest, UpdateNeverReadsTensorValues) {
  const torch::Device meta("meta");
  const torch::Tensor outputs = torch::empty({8, 4}, torch::TensorOptions().device(meta));
  const torch::Tensor binary = torch::empty({8, 1}, torch::TensorOptions().device(meta));
  const torch::Tensor targets =
      torch::empty({8}, torch::TensorOptions().device(meta).dtype(torch::kLong));
  const torch::Tensor loss = torch::empty({}, torch::TensorOptions().device(meta));
  for (const auto& metric : {metrics::loss(), metrics::accuracy(), metrics::top_k_accuracy(2),
                             metrics::matthews_correlation(), metrics::perplexity()}) {
    SCOPED_TRACE(metric->name());
    EXPECT_NO_THROW(metric->update(outputs, targets, loss));
    EXPECT_NO_THROW(metric->update(outputs, targets, loss));
    EXPECT_ANY_THROW(metric->compute());  // the premise: a read does throw
  }
  for (const auto& metric : {metrics::accuracy(), metrics::matthews_correlation()}) {
    SCOPED_TRACE(metric->name());
    EXPECT_NO_THROW(metric->update(binary, targets.to(torch::kFloat), loss));
  }
}

TEST(MetricsTest, MismatchedBatchSizesAreErrors) {
  EXPECT_THAT(
      [&] {
        metrics::accuracy()->update(torch::zeros({32, 10}), torch::zeros({31}), kNoLoss);
      },
      ThrowsMessage<Error>(HasSubstr("accuracy: outputs hold 32 examples, targets 31")));
  EXPECT_THAT(
      [&] {
        metrics::perplexity()->update(torch::zeros({4, 3}), torch::zeros({5}),
                                      torch::scalar_tensor(1.0));
      },
      ThrowsMessage<Error>(HasSubstr("perplexity: outputs hold 4 examples, targets 5")));
}

TEST(MetricsTest, BadShapesAreErrors) {
  EXPECT_THAT([&] { metrics::top_k_accuracy(0); },
              ThrowsMessage<Error>(HasSubstr("top_k_accuracy: k = 0, expected k >= 1")));
  EXPECT_THAT(
      [&] {
        metrics::top_k_accuracy(2)->update(torch::zeros({4}), labels({0, 1, 0, 1}), kNoLoss);
      },
      ThrowsMessage<Error>(HasSubstr("top2_accuracy: outputs [4], expected [N, C]")));
  EXPECT_THAT(
      [&] {
        metrics::accuracy()->update(torch::zeros({4, 3, 2}), torch::zeros({4, 2}), kNoLoss);
      },
      ThrowsMessage<Error>(HasSubstr("accuracy: outputs [4, 3, 2], expected [N, C]")));
  EXPECT_THAT(
      [&] {
        metrics::accuracy()->update(torch::zeros({4, 3}), torch::zeros({4, 3}), kNoLoss);
      },
      ThrowsMessage<Error>(HasSubstr("accuracy: targets [4, 3] for outputs [4, 3]")));
  EXPECT_THAT(
      [&] {
        metrics::loss()->update(torch::zeros({4, 3}), labels({0, 1, 2, 0}), torch::zeros({4}));
      },
      ThrowsMessage<Error>(HasSubstr("loss: batch loss [4], expected a scalar")));
  EXPECT_THAT(
      [&] {
        metrics::loss()->update(torch::zeros({4, 3}), labels({0, 1, 2, 0}), kNoLoss);
      },
      ThrowsMessage<Error>(HasSubstr("loss: batch loss undefined")));
}

TEST(MetricsTest, MatthewsRejectsAChangeOfClassCount) {
  auto mcc = metrics::matthews_correlation();
  mcc->update(torch::zeros({2, 10}), labels({0, 1}), kNoLoss);
  EXPECT_THAT(
      [&] {
        mcc->update(torch::zeros({2, 5}), labels({0, 1}), kNoLoss);
      },
      ThrowsMessage<Error>(
          HasSubstr("matthews_correlation: batch has 5 classes, earlier batches 10")));
}

TEST(MetricsTest, MatthewsReportsOutOfRangeTargetsWhenComputed) {
  auto mcc = metrics::matthews_correlation();
  // update() cannot look at target values without a sync, so compute() tells.
  EXPECT_NO_THROW(
      mcc->update(scores({1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f}, 2), labels({0, 3}), kNoLoss));
  EXPECT_THAT([&] { mcc->compute(); },
              ThrowsMessage<Error>(
                  HasSubstr("matthews_correlation: 1 of 2 targets lie outside the classes 0..2")));
}

TEST(MetricsTest, MatthewsMatchesTheBinaryFormula) {
  // tp = 2, tn = 1, fp = 1, fn = 1: (tp·tn − fp·fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)).
  auto mcc = metrics::matthews_correlation();
  mcc->update(torch::tensor({3.0f, 1.0f, 2.0f, -1.0f, -2.0f}), labels({1, 1, 0, 0, 1}), kNoLoss);
  EXPECT_NEAR(mcc->compute(), (2.0 * 1 - 1.0 * 1) / std::sqrt(3.0 * 3 * 2 * 2), kCountTolerance);
}

// The example in metrics.h: a metric of one's own needs update and clone.
class MeanAbsoluteError : public AccumulatingMetric {
 public:
  MeanAbsoluteError() : AccumulatingMetric("mae", torch::kDouble) {}
  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    accumulate((outputs.detach() - targets).abs().sum(), targets.numel());
  }
  std::shared_ptr<Metric> clone() const override { return std::make_shared<MeanAbsoluteError>(); }
};

// Adds the outputs themselves, counting the targets' rows: a sum of any
// dtype and shape; its value is the sum of the sum over the count.
class RawSum : public AccumulatingMetric {
 public:
  RawSum(torch::ScalarType dtype, std::vector<int64_t> shape)
      : AccumulatingMetric("raw", dtype, shape), dtype_(dtype), shape_(std::move(shape)) {}
  void update(const torch::Tensor& outputs, const torch::Tensor& targets,
              const torch::Tensor& /*loss*/) override {
    accumulate(outputs, targets.size(0));
  }
  std::shared_ptr<Metric> clone() const override {
    return std::make_shared<RawSum>(dtype_, shape_);
  }

 private:
  double value(const torch::Tensor& sum, int64_t count) const override {
    return sum.sum().item<double>() / static_cast<double>(count);
  }
  torch::ScalarType dtype_;
  std::vector<int64_t> shape_;
};

std::string saved_bytes(const Metric& metric) {
  torch::serialize::OutputArchive archive;
  metric.save(archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  return bytes.str();
}

void load_bytes(Metric& metric, const std::string& bytes) {
  std::istringstream in(bytes);
  torch::serialize::InputArchive archive;
  archive.load_from(in);
  metric.load(archive);
}

TEST(AccumulatingMetricTest, ADerivedMetricNeedsOnlyUpdateAndClone) {
  MeanAbsoluteError mae;
  EXPECT_EQ(mae.name(), "mae");
  EXPECT_TRUE(std::isnan(mae.compute()));
  mae.update(torch::tensor({1.0f, 2.0f}), torch::tensor({0.0f, 4.0f}), kNoLoss);
  mae.update(torch::tensor({3.0f}), torch::tensor({0.0f}), kNoLoss);
  EXPECT_DOUBLE_EQ(mae.compute(), (1.0 + 2.0 + 3.0) / 3);

  const auto resumed = mae.clone();
  EXPECT_TRUE(std::isnan(resumed->compute()));
  load_bytes(*resumed, saved_bytes(mae));
  EXPECT_DOUBLE_EQ(resumed->compute(), 2.0);
  resumed->update(torch::tensor({6.0f}), torch::tensor({0.0f}), kNoLoss);
  EXPECT_DOUBLE_EQ(resumed->compute(), 3.0);

  // Two processes that saw the same batches: the mean stays, the count doubles.
  mae.all_reduce([](torch::Tensor& tensor, ReduceOp op) {
    if (op == ReduceOp::sum) tensor.mul_(2);
  });
  EXPECT_DOUBLE_EQ(mae.compute(), 2.0);
  mae.update(torch::tensor({8.0f}), torch::tensor({0.0f}), kNoLoss);
  EXPECT_DOUBLE_EQ(mae.compute(), (12.0 + 8.0) / 7);
  mae.reset();
  EXPECT_TRUE(std::isnan(mae.compute()));
}

TEST(AccumulatingMetricTest, ACountOfZeroAddsNothing) {
  RawSum raw(torch::kDouble, {});
  const double nan = std::numeric_limits<double>::quiet_NaN();
  raw.update(torch::scalar_tensor(nan, torch::kDouble), torch::zeros({0}), kNoLoss);
  EXPECT_TRUE(std::isnan(raw.compute()));
  torch::serialize::InputArchive read;
  std::istringstream in(saved_bytes(raw));
  read.load_from(in);
  torch::Tensor sum;
  EXPECT_FALSE(read.try_read("sum", sum, /*is_buffer=*/true));  // no sum before a count

  raw.update(torch::scalar_tensor(4.0, torch::kDouble), torch::zeros({2}), kNoLoss);
  raw.update(torch::scalar_tensor(nan, torch::kDouble), torch::zeros({0}), kNoLoss);
  EXPECT_EQ(raw.compute(), 2.0);
}

TEST(AccumulatingMetricTest, BatchesKeepTheFirstBatchsDeviceAndShape) {
  RawSum fixed(torch::kLong, {});
  EXPECT_THAT([&] { fixed.update(torch::ones({2}, torch::kLong), torch::zeros({1}), kNoLoss); },
              ThrowsMessage<Error>(HasSubstr("raw: batch sum [2], expected []")));

  RawSum learned(torch::kLong, {-1});
  learned.update(torch::ones({3}, torch::kLong), torch::zeros({1}), kNoLoss);
  EXPECT_THAT([&] { learned.update(torch::ones({4}, torch::kLong), torch::zeros({1}), kNoLoss); },
              ThrowsMessage<Error>(HasSubstr("raw: batch sum [4], earlier batches [3]")));
  const torch::Tensor on_meta = torch::empty({3}, torch::TensorOptions().device("meta"));
  EXPECT_THAT([&] { learned.update(on_meta, torch::zeros({1}), kNoLoss); },
              ThrowsMessage<Error>(
                  HasSubstr("raw: batch on meta, earlier batches on cpu; reset() before moving")));
  EXPECT_EQ(learned.compute(), 3.0);  // what failed added nothing
  learned.reset();
  EXPECT_NO_THROW(learned.update(torch::ones({4}, torch::kLong), torch::zeros({1}), kNoLoss));
}

// A fake other process for all_reduce: it holds `other_sizes` (empty: no
// sum) and adds `other` (its sum, then its count) to what is summed.
struct OtherProcess {
  explicit OtherProcess(std::vector<int64_t> sizes = {}, std::vector<double> sums = {})
      : other_sizes(std::move(sizes)), other(std::move(sums)) {}

  std::vector<int64_t> other_sizes;
  std::vector<double> other;
  std::vector<ReduceOp> calls;

  trainloop::ReduceFunction reduce() {
    return [this](torch::Tensor& tensor, ReduceOp op) {
      calls.push_back(op);
      if (op == ReduceOp::max) {
        for (int64_t i = 0; i < tensor.numel(); ++i) {
          const int64_t theirs = other_sizes.empty() ? -1 : other_sizes[static_cast<size_t>(i)];
          tensor[i] = std::max(tensor[i].item<int64_t>(), theirs);
        }
      } else {
        tensor.add_(torch::tensor(other, torch::kDouble).to(tensor.scalar_type()));
      }
    };
  }
};

TEST(AccumulatingMetricTest, AllReduceAgreesALearnedSizeFirst) {
  {
    SCOPED_TRACE("this process saw nothing");
    RawSum raw(torch::kLong, {-1});
    OtherProcess other{{3}, {1, 2, 3, 2}};
    raw.all_reduce(other.reduce());
    EXPECT_EQ(other.calls, (std::vector<ReduceOp>{ReduceOp::max, ReduceOp::sum}));
    EXPECT_EQ(raw.compute(), 6.0 / 2);
    raw.update(torch::ones({3}, torch::kLong), torch::zeros({1}), kNoLoss);  // now [3] is set
    EXPECT_EQ(raw.compute(), 9.0 / 3);
  }
  {
    SCOPED_TRACE("no process saw anything");
    RawSum raw(torch::kLong, {-1});
    OtherProcess other;
    raw.all_reduce(other.reduce());
    EXPECT_EQ(other.calls, std::vector<ReduceOp>{ReduceOp::max});  // nothing to sum
    EXPECT_TRUE(std::isnan(raw.compute()));
  }
  {
    SCOPED_TRACE("both saw batches of different sizes");
    RawSum raw(torch::kLong, {-1});
    raw.update(torch::ones({2}, torch::kLong), torch::zeros({1}), kNoLoss);
    OtherProcess other{{3}, {1, 2, 3, 2}};
    EXPECT_THAT([&] { raw.all_reduce(other.reduce()); },
                ThrowsMessage<Error>(HasSubstr("raw: sum [2] on this process, [3] on another")));
  }
  {
    SCOPED_TRACE("a fixed shape needs no agreement");
    RawSum raw(torch::kDouble, {2});
    OtherProcess other{{}, {1, 2, 1}};
    raw.all_reduce(other.reduce());
    EXPECT_EQ(other.calls, std::vector<ReduceOp>{ReduceOp::sum});
    EXPECT_EQ(raw.compute(), 3.0);
  }
}

TEST(AccumulatingMetricTest, LoadRejectsASumOfAnotherDtypeOrShape) {
  RawSum doubles(torch::kDouble, {});
  doubles.update(torch::scalar_tensor(1.0, torch::kDouble), torch::zeros({1}), kNoLoss);
  RawSum longs(torch::kLong, {});
  EXPECT_THAT([&] { load_bytes(longs, saved_bytes(doubles)); },
              ThrowsMessage<Error>(HasSubstr("raw: the saved sum is Double [], expected Long []")));
  RawSum pair(torch::kDouble, {2});
  pair.update(torch::ones({2}, torch::kDouble), torch::zeros({1}), kNoLoss);
  EXPECT_THAT(
      [&] { load_bytes(doubles, saved_bytes(pair)); },
      ThrowsMessage<Error>(HasSubstr("raw: the saved sum is Double [2], expected Double []")));
  EXPECT_EQ(doubles.compute(), 1.0);  // a failed load leaves the state as it was

  torch::serialize::OutputArchive no_sum;
  no_sum.write("count", torch::tensor(int64_t{3}));
  std::ostringstream bytes;
  no_sum.save_to(bytes);
  EXPECT_THAT([&] { load_bytes(doubles, bytes.str()); },
              ThrowsMessage<Error>(HasSubstr("raw: the saved state holds count 3 without")));
}

TEST(AccumulatingMetricTest, ASizeBelowMinusOneIsAnError) {
  EXPECT_THAT([] { RawSum raw(torch::kLong, {2, -2}); },
              ThrowsMessage<Error>(HasSubstr("raw: sum shape [2, -2], expected sizes >= 0 or -1")));
}

}  // namespace
