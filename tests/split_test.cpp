#include "trainloop/data/split.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainloop/data/epochs.h"
#include "trainloop/error.h"

namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::epoch_permutation;
using trainloop::data::SplitIndices;
using trainloop::data::subset;
using trainloop::data::TensorDataset;
using trainloop::data::train_test_split;
using trainloop::data::train_test_split_indices;

nlohmann::json load_goldens() {
  const std::string path = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/split_goldens.json";
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(in);
}

std::vector<int64_t> longs(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Inputs [n, 2] whose first column is the example's index, so a part's rows
// say where they came from; targets: `labels`, or the index.
TensorDataset numbered(int64_t n, std::vector<int64_t> labels = {}) {
  const torch::Tensor index = torch::arange(n, torch::kFloat32);
  torch::Tensor targets = labels.empty() ? torch::arange(n) : torch::tensor(labels);
  return TensorDataset(torch::stack({index, index * 2}, 1), targets);
}

// Class c repeated sizes[c] times, in runs.
std::vector<int64_t> classes_of(const std::vector<int64_t>& sizes) {
  std::vector<int64_t> labels;
  for (size_t c = 0; c < sizes.size(); ++c) labels.insert(labels.end(), sizes[c], static_cast<int64_t>(c));
  return labels;
}

void expect_partition(const SplitIndices& parts, int64_t n) {
  std::vector<int64_t> train = longs(parts.train);
  std::vector<int64_t> test = longs(parts.test);
  EXPECT_TRUE(std::is_sorted(train.begin(), train.end()));
  EXPECT_TRUE(std::is_sorted(test.begin(), test.end()));
  std::vector<int64_t> all = train;
  all.insert(all.end(), test.begin(), test.end());
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expected(n);
  for (int64_t i = 0; i < n; ++i) expected[i] = i;
  EXPECT_EQ(all, expected) << "the parts are disjoint and cover 0..n-1";
}

TEST(SplitTest, TestSizesMatchScikitLearn) {
  const nlohmann::json goldens = load_goldens();
  ASSERT_EQ(goldens["sizes"].size(), 9u);
  for (const auto& c : goldens["sizes"]) {
    const auto n = c["n"].get<int64_t>();
    const auto fraction = c["test_fraction"].get<double>();
    SCOPED_TRACE(testing::Message() << "n " << n << " fraction " << fraction);
    const SplitIndices parts = train_test_split_indices(numbered(n), fraction, 42);
    EXPECT_EQ(parts.test.numel(), c["test_size"].get<int64_t>());
    EXPECT_EQ(parts.train.numel() + parts.test.numel(), n);
    expect_partition(parts, n);
  }
}

TEST(SplitTest, StratifiedCountsMatchScikitLearn) {
  const nlohmann::json goldens = load_goldens();
  ASSERT_EQ(goldens["stratified"].size(), 7u);
  for (const auto& c : goldens["stratified"]) {
    const auto sizes = c["class_sizes"].get<std::vector<int64_t>>();
    const auto fraction = c["test_fraction"].get<double>();
    SCOPED_TRACE(testing::Message() << "classes " << testing::PrintToString(sizes));
    const std::vector<int64_t> labels = classes_of(sizes);
    const auto n = static_cast<int64_t>(labels.size());
    for (const uint64_t seed : {0, 7, 42}) {
      const SplitIndices parts = train_test_split_indices(numbered(n, labels), fraction, seed, true);
      expect_partition(parts, n);
      const torch::Tensor label_tensor = torch::tensor(labels);
      const auto counts = longs(torch::bincount(label_tensor.index_select(0, parts.test), {},
                                                static_cast<int64_t>(sizes.size())));
      EXPECT_EQ(counts, c["test_per_class"].get<std::vector<int64_t>>()) << "seed " << seed;
    }
  }
}

// The documented contract: the test part is the first ceil(f·N) of
// epoch_permutation(N, seed, 0); stratified, each class's test examples are
// its first ones in that permutation.
TEST(SplitTest, DrawsFromTheEpochPermutation) {
  const SplitIndices parts = train_test_split_indices(numbered(50), 0.3, 9);
  std::vector<int64_t> first = longs(epoch_permutation(50, 9, 0).narrow(0, 0, 15));
  std::sort(first.begin(), first.end());
  EXPECT_EQ(longs(parts.test), first);

  const std::vector<int64_t> labels = classes_of({20, 30});  // 6 and 9 test examples
  const SplitIndices strata = train_test_split_indices(numbered(50, labels), 0.3, 9, true);
  std::vector<int64_t> expected;
  int64_t quota[2] = {6, 9};
  for (const int64_t i : longs(epoch_permutation(50, 9, 0))) {
    if (quota[labels[i]] > 0) {
      --quota[labels[i]];
      expected.push_back(i);
    }
  }
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(longs(strata.test), expected);
}

TEST(SplitTest, DeterministicFromTheSeed) {
  const TensorDataset data = numbered(100, classes_of({40, 60}));
  for (const bool stratify : {false, true}) {
    const SplitIndices a = train_test_split_indices(data, 0.2, 42, stratify);
    const SplitIndices b = train_test_split_indices(data, 0.2, 42, stratify);
    const SplitIndices c = train_test_split_indices(data, 0.2, 43, stratify);
    EXPECT_TRUE(torch::equal(a.test, b.test));
    EXPECT_TRUE(torch::equal(a.train, b.train));
    EXPECT_FALSE(torch::equal(a.test, c.test));
  }
}

TEST(SplitTest, PartsHoldTheirExamples) {
  const TensorDataset data = numbered(20, classes_of({8, 12}));
  const auto [train, test] = train_test_split(data, 0.25, 3, true);
  const SplitIndices parts = train_test_split_indices(data, 0.25, 3, true);
  EXPECT_TRUE(torch::equal(train.inputs.select(1, 0).to(torch::kLong), parts.train));
  EXPECT_TRUE(torch::equal(test.inputs.select(1, 0).to(torch::kLong), parts.test));
  EXPECT_TRUE(torch::equal(test.inputs.select(1, 1), test.inputs.select(1, 0) * 2));
  EXPECT_TRUE(torch::equal(test.targets, data.targets.index_select(0, parts.test)));
  EXPECT_EQ(train.size(), 15);
  EXPECT_EQ(test.size(), 5);
}

TEST(SplitTest, BadArguments) {
  const TensorDataset data = numbered(10);
  for (const double fraction : {0.0, 1.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    EXPECT_THAT([&] { train_test_split(data, fraction, 0); },
                ThrowsMessage<Error>(HasSubstr(
                    "expected a number between 0 and 1 (exclusive)")))
        << fraction;
  }
  EXPECT_THAT([&] { train_test_split(data, 1.5, 0); },
              ThrowsMessage<Error>(HasSubstr("train_test_split: test_fraction 1.5, expected")));
  EXPECT_THAT([&] { train_test_split(TensorDataset(), 0.2, 0); },
              ThrowsMessage<Error>(HasSubstr(
                  "train_test_split: the dataset holds no examples, expected at least 2")));
  EXPECT_THAT([&] { train_test_split(numbered(1), 0.2, 0); },
              ThrowsMessage<Error>(HasSubstr(
                  "test_fraction 0.2 of 1 examples leaves none for training")));
  EXPECT_THAT([&] { train_test_split(numbered(4), 0.9, 0); },
              ThrowsMessage<Error>(HasSubstr("leaves none for training")));
}

TEST(SplitTest, BadStratifyTargets) {
  EXPECT_THAT([&] { train_test_split(TensorDataset(torch::zeros({4, 2}), {}), 0.5, 0, true); },
              ThrowsMessage<Error>(HasSubstr("stratify needs targets, but the dataset has none")));
  EXPECT_THAT(
      [&] { train_test_split(TensorDataset(torch::zeros({4, 2}), torch::zeros({4})), 0.5, 0, true); },
      ThrowsMessage<Error>(HasSubstr("stratify needs integer class targets [4], found Float [4]")));
  EXPECT_THAT(
      [&] { train_test_split(TensorDataset(torch::zeros({4, 2}), torch::zeros({4, 1}, torch::kLong)), 0.5, 0, true); },
      ThrowsMessage<Error>(HasSubstr("found Long [4, 1]")));
  EXPECT_THAT([&] { train_test_split(numbered(5, {0, 0, 1, 2, 2}), 0.4, 0, true); },
              ThrowsMessage<Error>(HasSubstr(
                  "class 1 has 1 example, expected at least 2 per class to stratify")));
}

TEST(SplitTest, SubsetChecksIndices) {
  const TensorDataset data = numbered(5);
  EXPECT_EQ(subset(data, torch::tensor({4, 0}, torch::kLong)).size(), 2);
  EXPECT_EQ(subset(data, torch::empty({0}, torch::kLong)).size(), 0);
  EXPECT_THAT([&] { subset(data, torch::tensor({5}, torch::kLong)); },
              ThrowsMessage<Error>(HasSubstr("subset: index 5 out of range, expected 0 to 4")));
  EXPECT_THAT([&] { subset(data, torch::tensor({-1}, torch::kLong)); },
              ThrowsMessage<Error>(HasSubstr("subset: index -1 out of range")));
  EXPECT_THAT([&] { subset(data, torch::tensor({1.0f})); },
              ThrowsMessage<Error>(HasSubstr("subset: indices Float [1], expected int64 [n]")));
}

}  // namespace
