#include "trainloop/losses.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainloop/error.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
namespace losses = trainloop::losses;

// Hand computations below are in double from float32 inputs; the losses run in
// float32, so 1e-6 absolute covers their rounding on values of order 1.
constexpr double kTolerance = 1e-6;

double value(const torch::Tensor& loss) {
  EXPECT_EQ(loss.dim(), 0);
  return loss.item<double>();
}

double log_sum_exp(const std::vector<double>& row) {
  double total = 0.0;
  for (const double x : row) total += std::exp(x);
  return std::log(total);
}

TEST(LossesTest, MseByFormula) {
  const auto outputs = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});
  const auto targets = torch::tensor({1.5f, 2.0f, 2.0f, 5.0f}).reshape({2, 2});
  // Differences 0.5, 0, 1, 1.
  EXPECT_NEAR(value(losses::mse(outputs, targets)), (0.25 + 0.0 + 1.0 + 1.0) / 4, kTolerance);
}

TEST(LossesTest, L1ByFormula) {
  const auto outputs = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({2, 2});
  const auto targets = torch::tensor({1.5f, 2.0f, 2.0f, 5.0f}).reshape({2, 2});
  EXPECT_NEAR(value(losses::l1(outputs, targets)), (0.5 + 0.0 + 1.0 + 1.0) / 4, kTolerance);
}

TEST(LossesTest, ColumnOutputsMatchFlatTargetsWithoutBroadcasting) {
  // [3, 1] against [3] would broadcast to [3, 3] in LibTorch's mse_loss.
  const auto outputs = torch::tensor({1.0f, 2.0f, 3.0f}).reshape({3, 1});
  const auto targets = torch::tensor({1, 2, 5});  // integer targets are converted
  EXPECT_NEAR(value(losses::mse(outputs, targets)), 4.0 / 3, kTolerance);
  EXPECT_NEAR(value(losses::l1(outputs.reshape({3}), targets.reshape({3, 1}))), 2.0 / 3,
              kTolerance);
}

TEST(LossesTest, BinaryCrossEntropyWithLogitsByFormula) {
  const std::vector<double> x = {-2.0, 0.0, 0.5, 3.0};
  const std::vector<double> y = {0.0, 1.0, 1.0, 0.0};
  double expected = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    // -[y log σ(x) + (1 - y) log(1 - σ(x))] = log(1 + e^x) - x y
    expected += std::log1p(std::exp(x[i])) - x[i] * y[i];
  }
  expected /= static_cast<double>(x.size());
  const auto outputs = torch::tensor({-2.0f, 0.0f, 0.5f, 3.0f}).reshape({4, 1});
  EXPECT_NEAR(value(losses::binary_cross_entropy_with_logits(outputs, torch::tensor({0, 1, 1, 0}))),
              expected, kTolerance);
  EXPECT_NEAR(value(losses::binary_cross_entropy_with_logits(
                  outputs.reshape({4}), torch::tensor({0.0f, 1.0f, 1.0f, 0.0f}))),
              expected, kTolerance);
}

TEST(LossesTest, BinaryCrossEntropyGradientKeepsTheOutputShape) {
  const auto outputs = torch::zeros({4, 1}, torch::requires_grad());
  losses::binary_cross_entropy_with_logits(outputs, torch::tensor({0, 1, 1, 0})).backward();
  ASSERT_TRUE(outputs.grad().defined());
  EXPECT_EQ(outputs.grad().sizes(), outputs.sizes());
  // d/dx mean(log(1 + e^x) - x y) at x = 0 is (0.5 - y) / N.
  EXPECT_NEAR(outputs.grad()[0][0].item<double>(), 0.5 / 4, kTolerance);
  EXPECT_NEAR(outputs.grad()[1][0].item<double>(), -0.5 / 4, kTolerance);
}

TEST(LossesTest, CrossEntropyByFormula) {
  const std::vector<std::vector<double>> logits = {{1.0, 2.0, 0.5}, {-1.0, 0.0, 3.0}};
  const std::vector<int64_t> targets = {0, 2};
  double expected = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    expected += log_sum_exp(logits[i]) - logits[i][targets[i]];
  }
  expected /= 2;
  const auto outputs = torch::tensor({1.0f, 2.0f, 0.5f, -1.0f, 0.0f, 3.0f}).reshape({2, 3});
  EXPECT_NEAR(value(losses::cross_entropy(outputs, torch::tensor(targets))), expected, kTolerance);
  // uint8 labels, as read from IDX files, work too.
  EXPECT_NEAR(value(losses::cross_entropy(outputs, torch::tensor(targets).to(torch::kByte))),
              expected, kTolerance);
}

TEST(LossesTest, CrossEntropyOverSequences) {
  // [N, C, T] against [N, T]: the mean over every token.
  const auto outputs = torch::tensor({0.0f, 1.0f, 2.0f, 0.0f}).reshape({1, 2, 2});
  const auto targets = torch::tensor({1, 0}).reshape({1, 2});
  // Token 0 scores (0, 2), target 1; token 1 scores (1, 0), target 0.
  const double expected = (log_sum_exp({0.0, 2.0}) - 2.0 + log_sum_exp({1.0, 0.0}) - 1.0) / 2;
  EXPECT_NEAR(value(losses::cross_entropy(outputs, targets)), expected, kTolerance);
}

TEST(LossesTest, NllByFormula) {
  const auto log_probabilities =
      torch::tensor({-0.1f, -2.0f, -3.0f, -1.5f, -0.3f, -2.5f}).reshape({2, 3});
  EXPECT_NEAR(value(losses::nll(log_probabilities, torch::tensor({0, 1}))), (0.1 + 0.3) / 2,
              kTolerance);
}

// The batch losses in the metric goldens are PyTorch's own float32
// cross-entropy and BCE; ours should agree to float32 rounding.
TEST(LossesTest, MatchesPyTorchOnTheMetricGoldens) {
  const std::string path = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/metric_goldens.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path;
  const auto goldens = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& fixture : goldens["fixtures"]) {
    const bool binary = fixture["num_classes"].get<int>() == 2;
    for (const auto& batch : fixture["batches"]) {
      SCOPED_TRACE(fixture["name"].get<std::string>());
      const auto outputs = torch::tensor(batch["outputs"].get<std::vector<double>>())
                               .reshape(batch["outputs_shape"].get<std::vector<int64_t>>())
                               .to(torch::kFloat);
      const auto targets = torch::tensor(batch["targets"].get<std::vector<double>>())
                               .reshape(batch["targets_shape"].get<std::vector<int64_t>>());
      const auto loss = binary ? losses::binary_cross_entropy_with_logits(outputs, targets)
                               : losses::cross_entropy(outputs, targets.to(torch::kLong));
      const double expected = batch["loss"].get<double>();
      EXPECT_NEAR(value(loss), expected, 1e-6 * std::abs(expected));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 18);
}

TEST(LossesTest, ShapeMismatchesAreErrors) {
  EXPECT_THAT(
      [&] {
        losses::mse(torch::zeros({4, 3}), torch::zeros({4}));
      },
      ThrowsMessage<Error>(HasSubstr("mse: outputs [4, 3] and targets [4] differ in shape")));
  EXPECT_THAT(
      [&] {
        losses::l1(torch::zeros({2, 3}), torch::zeros({3, 2}));
      },
      ThrowsMessage<Error>(HasSubstr("l1: outputs [2, 3] and targets [3, 2] differ in shape")));
  EXPECT_THAT(
      [&] {
        losses::binary_cross_entropy_with_logits(torch::zeros({4, 2}), torch::zeros({4}));
      },
      ThrowsMessage<Error>(HasSubstr(
          "binary_cross_entropy_with_logits: outputs [4, 2] and targets [4] differ in shape")));
  EXPECT_THAT(
      [&] {
        losses::cross_entropy(torch::zeros({4, 3}), torch::zeros({5}, torch::kLong));
      },
      ThrowsMessage<Error>(
          HasSubstr("cross_entropy: outputs [4, 3] need class-index targets [4], got [5]")));
  EXPECT_THAT(
      [&] {
        losses::cross_entropy(torch::zeros({2, 3, 7}), torch::zeros({2, 3}, torch::kLong));
      },
      ThrowsMessage<Error>(HasSubstr(
          "cross_entropy: outputs [2, 3, 7] need class-index targets [2, 7], got [2, 3]")));
  EXPECT_THAT([&] { losses::nll(torch::zeros({4}), torch::zeros({4}, torch::kLong)); },
              ThrowsMessage<Error>(HasSubstr("nll: outputs [4], expected [N, C, ...]")));
}

TEST(LossesTest, WrongTypesAreErrors) {
  EXPECT_THAT(
      [&] {
        losses::cross_entropy(torch::zeros({4, 3}), torch::zeros({4}));
      },
      ThrowsMessage<Error>(
          HasSubstr("cross_entropy: targets are Float, expected integer class indices")));
  EXPECT_THAT(
      [&] { losses::mse(torch::zeros({4}, torch::kLong), torch::zeros({4})); },
      ThrowsMessage<Error>(HasSubstr("mse: outputs are Long, expected a floating-point type")));
  EXPECT_THAT([&] { losses::l1(torch::Tensor(), torch::zeros({4})); },
              ThrowsMessage<Error>(HasSubstr("l1: outputs or targets are undefined tensors")));
}

}  // namespace
