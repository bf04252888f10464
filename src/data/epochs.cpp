#include "trainloop/data/epochs.h"

#include <utility>

namespace trainloop::data {
namespace detail {
namespace {

// ExampleOrder rejects an empty dataset, whose inputs have no device to ask.
torch::Device device_of(const TensorDataset& dataset) {
  return dataset.inputs.defined() ? dataset.inputs.device() : torch::Device(torch::kCPU);
}

}  // namespace

TensorBatches::TensorBatches(TensorDataset dataset, int64_t batch_size, const char* who,
                             bool shuffle)
    : dataset_(std::move(dataset)),
      order_(dataset_.size(), batch_size, who, shuffle, device_of(dataset_)) {}

void TensorBatches::start_epoch(int64_t epoch) { order_.start_epoch(epoch); }

int64_t TensorBatches::batch_count() const { return order_.batch_count(); }

void TensorBatches::shard(int64_t rank, int64_t world_size, bool pad) {
  order_.shard(rank, world_size, pad);
}

bool TensorBatches::shuffles() const { return order_.shuffle(); }

Batch TensorBatches::batch(int64_t index) const {
  if (order_.consecutive()) {
    // Consecutive examples: a view, no copy.
    const auto [start, length] = order_.span(index);
    return {dataset_.inputs.narrow(0, start, length),
            dataset_.targets.defined() ? dataset_.targets.narrow(0, start, length)
                                       : torch::Tensor()};
  }
  const torch::Tensor rows = order_.rows(index);
  Batch batch{dataset_.inputs.index_select(0, rows), torch::Tensor()};
  if (dataset_.targets.defined()) {
    batch.targets = dataset_.targets.index_select(0, rows.to(dataset_.targets.device()));
  }
  return batch;
}

}  // namespace detail

Epochs::Epochs(TensorDataset dataset, int64_t batch_size)
    : TensorBatches(std::move(dataset), batch_size, "Epochs", /*shuffle=*/true) {}

Epochs& Epochs::shuffle(bool on) {
  order_.shuffle(on);
  return *this;
}

Epochs& Epochs::drop_last(bool on) {
  order_.drop_last(on);
  return *this;
}

Epochs& Epochs::seed(uint64_t seed) {
  order_.seed(seed);
  return *this;
}

Batches::Batches(TensorDataset dataset, int64_t batch_size)
    : TensorBatches(std::move(dataset), batch_size, "Batches", /*shuffle=*/false) {}

Batches& Batches::drop_last(bool on) {
  order_.drop_last(on);
  return *this;
}

}  // namespace trainloop::data
