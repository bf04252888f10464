#include "trainloop/data/torch_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/shards.h"
#include "trainloop/data/idx.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;
using trainloop::Error;
using trainloop::data::Batch;
using trainloop::data::epoch_permutation;
using trainloop::data::Epochs;
using trainloop::data::TensorDataset;
using trainloop::data::TorchDataset;
using trainloop::testing_support::expected_shard;
using trainloop::testing_support::iota;
using trainloop::testing_support::to_vector;

// A user's dataset: example i is the features [i, -i] with target i % 3.
struct Counting : torch::data::datasets::Dataset<Counting> {
  explicit Counting(size_t n) : n(n) {}
  torch::data::Example<> get(size_t index) override {
    const auto i = static_cast<float>(index);
    return {torch::tensor({i, -i}), torch::tensor(static_cast<int64_t>(index % 3))};
  }
  torch::optional<size_t> size() const override { return n; }
  size_t n;
};

// Inputs only.
struct Unlabelled
    : torch::data::datasets::Dataset<Unlabelled, torch::data::Example<torch::Tensor,
                                                                      torch::data::example::NoTarget>> {
  ExampleType get(size_t index) override { return torch::full({3}, static_cast<double>(index)); }
  torch::optional<size_t> size() const override { return 5; }
};

// Example 2 has another shape.
struct Ragged : torch::data::datasets::Dataset<Ragged> {
  torch::data::Example<> get(size_t index) override {
    return {torch::zeros({index == 2 ? 3 : 2}), torch::tensor(0)};
  }
  torch::optional<size_t> size() const override { return 4; }
};

// The example indices of a batch of `Counting`, read back from its first feature.
std::vector<int64_t> indices_of(const Batch& batch) {
  const torch::Tensor first = batch.inputs.select(1, 0).to(torch::kLong).contiguous();
  return std::vector<int64_t>(first.data_ptr<int64_t>(), first.data_ptr<int64_t>() + first.numel());
}

// All of `dataset`'s examples in tensors, for Epochs.
TensorDataset as_tensors(Counting& dataset) {
  std::vector<torch::Tensor> inputs, targets;
  for (size_t i = 0; i < dataset.n; ++i) {
    inputs.push_back(dataset.get(i).data);
    targets.push_back(dataset.get(i).target);
  }
  return TensorDataset(torch::stack(inputs), torch::stack(targets));
}

TEST(TorchDatasetTest, StacksExamplesInOrder) {
  TorchDataset source(Counting(7), 3);
  source.shuffle(false);
  source.start_epoch(0);
  ASSERT_EQ(source.batch_count(), 3);
  EXPECT_EQ(source.size(), 7);
  const Batch first = source.batch(0);
  EXPECT_EQ(first.inputs.sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_TRUE(torch::equal(first.inputs, torch::tensor({{0.f, -0.f}, {1.f, -1.f}, {2.f, -2.f}})));
  EXPECT_TRUE(torch::equal(first.targets, torch::tensor({0, 1, 2}, torch::kLong)));
  const Batch last = source.batch(2);
  EXPECT_EQ(indices_of(last), (std::vector<int64_t>{6}));
  EXPECT_EQ(to_vector(last.targets), (std::vector<int64_t>{0}));
  source.drop_last(true);
  EXPECT_EQ(source.batch_count(), 2);
}

TEST(TorchDatasetTest, ShufflesByEpochPermutation) {
  TorchDataset source(Counting(10), 4);
  source.seed(9);
  for (const int64_t epoch : {0, 1, 5}) {
    source.start_epoch(epoch);
    std::vector<int64_t> seen;
    for (int64_t b = 0; b < source.batch_count(); ++b) {
      const Batch batch = source.batch(b);
      const std::vector<int64_t> indices = indices_of(batch);
      for (size_t i = 0; i < indices.size(); ++i) {
        EXPECT_EQ(to_vector(batch.targets)[i], indices[i] % 3);
      }
      seen.insert(seen.end(), indices.begin(), indices.end());
    }
    EXPECT_EQ(seen, to_vector(epoch_permutation(10, 9, epoch))) << "epoch " << epoch;
  }
}

TEST(TorchDatasetTest, SameBatchesAsEpochsOverTheSameTensors) {
  Counting dataset(11);
  Epochs epochs(as_tensors(dataset), 4);
  epochs.seed(3);
  TorchDataset source(dataset, 4);
  source.seed(3);
  for (const int64_t epoch : {0, 1}) {
    epochs.start_epoch(epoch);
    source.start_epoch(epoch);
    ASSERT_EQ(source.batch_count(), epochs.batch_count());
    for (int64_t b = 0; b < epochs.batch_count(); ++b) {
      EXPECT_TRUE(torch::equal(source.batch(b).inputs, epochs.batch(b).inputs));
      EXPECT_TRUE(torch::equal(source.batch(b).targets, epochs.batch(b).targets));
    }
  }
}

TEST(TorchDatasetTest, MappedAndStackedDatasets) {
  auto normalized = Counting(6).map(torch::data::transforms::Lambda<torch::data::Example<>>(
      [](torch::data::Example<> e) { return torch::data::Example<>(e.data * 2, e.target); }));
  TorchDataset mapped(std::move(normalized), 4);
  mapped.shuffle(false);
  EXPECT_TRUE(torch::equal(mapped.batch(1).inputs, torch::tensor({{8.f, -8.f}, {10.f, -10.f}})));

  auto stacked = Counting(6).map(torch::data::transforms::Stack<>());
  TorchDataset already(std::move(stacked), 4);
  already.shuffle(false);
  const Batch batch = already.batch(0);
  EXPECT_EQ(batch.inputs.sizes(), (std::vector<int64_t>{4, 2}));
  EXPECT_TRUE(torch::equal(batch.targets, torch::tensor({0, 1, 2, 0}, torch::kLong)));
}

TEST(TorchDatasetTest, ExamplesWithoutTargets) {
  TorchDataset source(Unlabelled(), 2);
  source.shuffle(false);
  const Batch batch = source.batch(2);
  EXPECT_FALSE(batch.targets.defined());
  EXPECT_TRUE(torch::equal(batch.inputs, torch::full({1, 3}, 4.0)));
}

TEST(TorchDatasetTest, BadInput) {
  EXPECT_THAT([] { TorchDataset(Counting(0), 4); },
              ThrowsMessage<Error>(HasSubstr("TorchDataset: the dataset holds no examples")));
  EXPECT_THAT([] { TorchDataset(Counting(3), 0); },
              ThrowsMessage<Error>(HasSubstr("TorchDataset: batch size 0, expected a positive")));
  TorchDataset source(Counting(5), 2);
  EXPECT_THAT([&] { source.batch(0); },
              ThrowsMessage<Error>(HasSubstr("batch 0 requested before start_epoch()")));
  source.start_epoch(0);
  EXPECT_THAT([&] { source.batch(3); },
              ThrowsMessage<Error>(HasSubstr("TorchDataset: batch 3 out of range, expected 0 to 2")));
  EXPECT_THAT([&] { source.start_epoch(-1); },
              ThrowsMessage<Error>(HasSubstr("start_epoch(-1)")));
  TorchDataset ragged(Ragged(), 4);
  ragged.shuffle(false);
  EXPECT_THAT([&] { ragged.batch(0); },
              ThrowsMessage<Error>(HasSubstr(
                  "TorchDataset: batch 0: example 2 has data [3], example 0 [2]")));
}

// Every example index of one epoch, batch by batch.
template <class Source>
std::vector<int64_t> epoch_indices(Source& source, int64_t epoch) {
  source.start_epoch(epoch);
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < source.batch_count(); ++b) {
    const std::vector<int64_t> indices = indices_of(source.batch(b));
    seen.insert(seen.end(), indices.begin(), indices.end());
  }
  return seen;
}

TEST(TorchDatasetTest, PaddedShardsSplitTheEpochsPermutation) {
  for (const int64_t world : {2, 3, 4}) {
    for (int64_t rank = 0; rank < world; ++rank) {
      TorchDataset source(Counting(10), 3);
      source.seed(7).shard(rank, world, /*pad=*/true);
      const auto order = to_vector(epoch_permutation(10, 7, 2));
      EXPECT_EQ(epoch_indices(source, 2), expected_shard(order, rank, world, true))
          << rank << " of " << world;
      EXPECT_EQ(source.example_count(), (10 + world - 1) / world);
      EXPECT_EQ(source.batch_count(), ((10 + world - 1) / world + 2) / 3);
    }
  }
}

TEST(TorchDatasetTest, UnpaddedShardsHoldEachExampleOnce) {
  std::vector<int64_t> all;
  for (int64_t rank = 0; rank < 3; ++rank) {
    TorchDataset source(Counting(10), 4);
    source.shuffle(false).shard(rank, 3, /*pad=*/false);
    const auto seen = epoch_indices(source, 0);
    EXPECT_EQ(seen, expected_shard(iota(10), rank, 3, false)) << "rank " << rank;
    EXPECT_EQ(source.example_count(), rank == 0 ? 4 : 3);
    all.insert(all.end(), seen.begin(), seen.end());
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, iota(10));
}

TEST(TorchDatasetTest, ShardsLikeEpochsAndWholeAgainAtZeroOfOne) {
  Counting dataset(11);
  Epochs epochs(as_tensors(dataset), 2);
  epochs.seed(5).shard(1, 2, /*pad=*/true);
  TorchDataset source(dataset, 2);
  source.seed(5).shard(1, 2, /*pad=*/true);
  epochs.start_epoch(3);
  source.start_epoch(3);
  ASSERT_EQ(source.batch_count(), epochs.batch_count());
  for (int64_t b = 0; b < epochs.batch_count(); ++b) {
    EXPECT_TRUE(torch::equal(source.batch(b).inputs, epochs.batch(b).inputs)) << "batch " << b;
  }
  source.shard(0, 1, /*pad=*/false);
  EXPECT_EQ(epoch_indices(source, 3), to_vector(epoch_permutation(11, 5, 3)));
  EXPECT_THAT([&] { source.shard(3, 2, true); },
              ThrowsMessage<Error>(HasSubstr("TorchDataset: shard 3 of 2, expected a rank")));
}

// Same model, same order: a fit from the adapter ends at the very weights of
// a fit from Epochs over the same tensors.
TEST(TorchDatasetTest, FitsLikeEpochs) {
  Counting dataset(24);
  std::vector<torch::Tensor> inputs, targets;
  for (size_t i = 0; i < 24; ++i) {
    inputs.push_back(dataset.get(i).data / 24);
    targets.push_back(dataset.get(i).target);
  }
  auto scaled = Counting(24).map(torch::data::transforms::Lambda<torch::data::Example<>>(
      [](torch::data::Example<> e) { return torch::data::Example<>(e.data / 24, e.target); }));
  auto train = [](trainloop::data::DataSource source) {
    torch::manual_seed(4);
    torch::nn::Linear model(2, 3);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5));
    trainloop::TrainingLoop loop(std::move(source), nullptr, optimizer,
                                 trainloop::losses::cross_entropy);
    loop.fit(model, 3);
    return torch::cat({model->weight.detach().flatten(), model->bias.detach()});
  };
  const torch::Tensor from_epochs =
      train(Epochs(TensorDataset(torch::stack(inputs), torch::stack(targets)), 5).seed(2));
  const torch::Tensor from_adapter = train(TorchDataset(std::move(scaled), 5).seed(2));
  EXPECT_TRUE(torch::equal(from_epochs, from_adapter)) << from_epochs << from_adapter;
}

// torch's own MNIST reader needs the unpacked files; unpack Debian's
// Fashion-MNIST test set and compare with trainloop's IDX reader.
TEST(TorchDatasetTest, TorchMnistMatchesTheIdxReader) {
  const fs::path source = "/usr/share/datasets/fashion-mnist";
  ASSERT_TRUE(fs::exists(source)) << source << " is missing: install the dataset-fashion-mnist package";
  const fs::path dir =
      fs::temp_directory_path() /
      ("trainloop_torch_dataset_test_" +
       std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  fs::create_directories(dir);
  for (const std::string name : {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) {
    gzFile in = gzopen((source / (name + ".gz")).c_str(), "rb");
    ASSERT_NE(in, nullptr);
    std::ofstream out(dir / name, std::ios::binary);
    char buffer[1 << 16];
    int got = 0;
    while ((got = gzread(in, buffer, sizeof buffer)) > 0) out.write(buffer, got);
    gzclose(in);
  }
  TorchDataset mnist(torch::data::datasets::MNIST(dir.string(),
                                                  torch::data::datasets::MNIST::Mode::kTest),
                     1000);
  mnist.shuffle(false);
  const auto [train, test] = trainloop::data::fashion_mnist(source.string());
  ASSERT_EQ(mnist.size(), test.size());
  for (const int64_t b : {0, 9}) {
    const Batch batch = mnist.batch(b);
    EXPECT_TRUE(torch::equal(batch.inputs, test.inputs.narrow(0, b * 1000, 1000)));
    EXPECT_TRUE(torch::equal(batch.targets, test.targets.narrow(0, b * 1000, 1000)));
  }
  fs::remove_all(dir);
}

}  // namespace
