// The torch::data pieces the benchmarks feed LibTorch's own DataLoader with:
// a dataset of one example per get and a sampler that serves a given order.
#pragma once

#include <trainloop/trainloop.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

namespace trainloop::bench {

// A map-style torch::data dataset over in-memory tensors: the way LibTorch's
// documentation feeds its DataLoader (one example per get, then Stack).
class Rows : public torch::data::datasets::Dataset<Rows> {
 public:
  explicit Rows(data::TensorDataset data) : data_(std::move(data)) {}
  torch::data::Example<> get(size_t index) override {
    const auto i = static_cast<int64_t>(index);
    return {data_.inputs[i], data_.targets[i]};
  }
  torch::optional<size_t> size() const override { return static_cast<size_t>(data_.size()); }

 private:
  data::TensorDataset data_;
};

// Serves a given order, which the caller changes before each epoch (as
// Python's DistributedSampler.set_epoch): LibTorch's RandomSampler draws its
// own permutation, and every implementation must see the same batches.
class GivenOrder : public torch::data::samplers::Sampler<> {
 public:
  explicit GivenOrder(std::shared_ptr<std::vector<size_t>> order) : order_(std::move(order)) {}
  void reset(torch::optional<size_t> /*new_size*/ = torch::nullopt) override { next_ = 0; }
  torch::optional<std::vector<size_t>> next(size_t batch_size) override {
    if (next_ >= order_->size()) return torch::nullopt;
    const size_t end = std::min(order_->size(), next_ + batch_size);
    std::vector<size_t> batch(order_->begin() + static_cast<std::ptrdiff_t>(next_),
                              order_->begin() + static_cast<std::ptrdiff_t>(end));
    next_ = end;
    return batch;
  }
  void save(torch::serialize::OutputArchive& /*archive*/) const override {}
  void load(torch::serialize::InputArchive& /*archive*/) override {}

 private:
  std::shared_ptr<std::vector<size_t>> order_;
  size_t next_ = 0;
};

}  // namespace trainloop::bench
