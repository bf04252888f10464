#include "trainloop/data/split.h"

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "../error_text.h"
#include "trainloop/data/example_order.h"
#include "trainloop/error.h"

namespace trainloop::data {
namespace {

constexpr const char* kWho = "train_test_split";
// Keeps N * N within int64 for the exact stratified shares.
constexpr int64_t kMaxExamples = int64_t{3} << 30;


// The class label of every example, checked for stratifying.
std::vector<int64_t> class_labels(const TensorDataset& dataset) {
  const torch::Tensor& targets = dataset.targets;
  if (!targets.defined()) {
    throw Error(fmt::format("{}: stratify needs targets, but the dataset has none", kWho));
  }
  if (targets.dim() != 1 || torch::isFloatingType(targets.scalar_type()) ||
      targets.scalar_type() == torch::kBool || targets.is_complex()) {
    throw Error(fmt::format("{}: stratify needs integer class targets [{}], found {} {}", kWho,
                            dataset.size(), c10::toString(targets.scalar_type()),
                            trainloop::detail::sizes_text(targets.sizes())));
  }
  const torch::Tensor labels = targets.to(torch::kCPU, torch::kLong).contiguous();
  return std::vector<int64_t>(labels.data_ptr<int64_t>(),
                              labels.data_ptr<int64_t>() + labels.numel());
}

// How many test examples each class gets (see the header for the rule).
std::map<int64_t, int64_t> test_quotas(const std::vector<int64_t>& labels, int64_t test_count) {
  std::map<int64_t, int64_t> sizes;
  for (const int64_t label : labels) ++sizes[label];
  const auto total = static_cast<int64_t>(labels.size());
  struct Share {
    int64_t label;
    int64_t size;
    int64_t remainder;  // of test_count * size / total, compared exactly
  };
  std::vector<Share> shares;
  std::map<int64_t, int64_t> quotas;
  int64_t assigned = 0;
  for (const auto& [label, size] : sizes) {
    if (size < 2) {
      throw Error(fmt::format("{}: class {} has {} example, expected at least 2 per class to "
                              "stratify",
                              kWho, label, size));
    }
    // Exact in int64: test_count and size are at most N, and N < kMaxExamples.
    const int64_t product = test_count * size;
    quotas[label] = product / total;
    assigned += product / total;
    shares.push_back({label, size, product % total});
  }
  std::stable_sort(shares.begin(), shares.end(), [](const Share& a, const Share& b) {
    return a.remainder > b.remainder;  // stable: equal remainders keep label order
  });
  for (const Share& share : shares) {
    if (assigned >= test_count) break;
    if (quotas[share.label] + 1 < share.size) {
      ++quotas[share.label];
      ++assigned;
    }
  }
  return quotas;
}

torch::Tensor sorted_tensor(std::vector<int64_t> indices) {
  std::sort(indices.begin(), indices.end());
  return torch::tensor(indices, torch::kLong);
}

}  // namespace

SplitIndices train_test_split_indices(const TensorDataset& dataset, double test_fraction,
                                      uint64_t seed, bool stratify) {
  if (!(test_fraction > 0.0 && test_fraction < 1.0)) {
    throw Error(fmt::format("{}: test_fraction {}, expected a number between 0 and 1 "
                            "(exclusive)",
                            kWho, test_fraction));
  }
  const int64_t size = dataset.size();
  if (size == 0) {
    throw Error(fmt::format("{}: the dataset holds no examples, expected at least 2", kWho));
  }
  if (size > kMaxExamples) {
    throw Error(fmt::format("{}: {} examples, expected at most {}", kWho, size, kMaxExamples));
  }
  const auto test_count = static_cast<int64_t>(std::ceil(test_fraction * static_cast<double>(size)));
  if (test_count >= size) {
    throw Error(fmt::format("{}: test_fraction {} of {} examples leaves none for training, "
                            "expected a smaller fraction or more examples",
                            kWho, test_fraction, size));
  }
  const torch::Tensor order = epoch_permutation(size, seed, 0);
  const int64_t* permuted = order.data_ptr<int64_t>();
  std::vector<int64_t> train;
  std::vector<int64_t> test;
  if (!stratify) {
    test.assign(permuted, permuted + test_count);
    train.assign(permuted + test_count, permuted + size);
  } else {
    const std::vector<int64_t> labels = class_labels(dataset);
    std::map<int64_t, int64_t> quotas = test_quotas(labels, test_count);
    for (int64_t i = 0; i < size; ++i) {
      const int64_t example = permuted[i];
      int64_t& quota = quotas[labels[example]];
      if (quota > 0) {
        --quota;
        test.push_back(example);
      } else {
        train.push_back(example);
      }
    }
  }
  return {sorted_tensor(std::move(train)), sorted_tensor(std::move(test))};
}

std::pair<TensorDataset, TensorDataset> train_test_split(const TensorDataset& dataset,
                                                         double test_fraction, uint64_t seed,
                                                         bool stratify) {
  const SplitIndices parts = train_test_split_indices(dataset, test_fraction, seed, stratify);
  return {subset(dataset, parts.train), subset(dataset, parts.test)};
}

TensorDataset subset(const TensorDataset& dataset, const torch::Tensor& indices) {
  if (!indices.defined() || indices.dim() != 1 || indices.scalar_type() != torch::kLong) {
    throw Error(fmt::format("subset: indices {}, expected int64 [n]",
                            indices.defined() ? fmt::format("{} {}",
                                                            c10::toString(indices.scalar_type()),
                                                            trainloop::detail::sizes_text(indices.sizes()))
                                              : std::string("undefined")));
  }
  const int64_t size = dataset.size();
  if (indices.numel() > 0) {
    const torch::Tensor cpu = indices.to(torch::kCPU);
    const int64_t low = cpu.min().item<int64_t>();
    const int64_t high = cpu.max().item<int64_t>();
    if (low < 0 || high >= size) {
      throw Error(fmt::format("subset: index {} out of range, expected 0 to {}",
                              low < 0 ? low : high, size - 1));
    }
  }
  TensorDataset part;
  if (dataset.inputs.defined()) {
    part.inputs = dataset.inputs.index_select(0, indices.to(dataset.inputs.device()));
  }
  if (dataset.targets.defined()) {
    part.targets = dataset.targets.index_select(0, indices.to(dataset.targets.device()));
  }
  return part;
}

}  // namespace trainloop::data
