// Data-parallel training with ranks as threads of this process: the bucketed
// gradient reducer, and fit / evaluate against one process on the union of
// the ranks' batches.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../src/distributed/gradient_reducer.h"
#include "support/ranks.h"
#include "support/test_support.h"
#include "support/toy_task.h"
#include "trainloop/callbacks/checkpoint.h"
#include "trainloop/data/prefetch.h"
#include "trainloop/data/torch_dataset.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;
using testing_support::run_ranks;
using testing_support::TempDir;

struct NetImpl : torch::nn::Module {
  NetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(4, 16))),
        fc2(register_module("fc2", torch::nn::Linear(16, 3))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Net);

Net make_net(uint64_t seed) {
  torch::manual_seed(seed);
  return Net();
}

std::vector<torch::Tensor> copies(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> out;
  for (const auto& t : tensors) out.push_back(t.detach().clone());
  return out;
}

void expect_close(const std::vector<torch::Tensor>& actual, const std::vector<torch::Tensor>& expected,
                  double tolerance, const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    const double difference = (actual[i] - expected[i]).abs().max().item<double>();
    EXPECT_LE(difference, tolerance) << what << ": tensor " << i;
  }
}

// --- the gradient reducer ----------------------------------------------------

struct ReducerCase {
  int64_t bucket_bytes;
  bool overlap;
};

class GradientReducerTest : public testing::TestWithParam<ReducerCase> {};

// Rank r's loss on its own batch of `batches`: the gradients a rank computes.
torch::Tensor rank_loss(Net& net, const data::TensorDataset& data, int64_t rank, int64_t part) {
  const torch::Tensor x = data.inputs.narrow(0, 8 * (2 * part + rank), 8);
  const torch::Tensor y = data.targets.narrow(0, 8 * (2 * part + rank), 8);
  return torch::nn::functional::cross_entropy(net(x), y);
}

TEST_P(GradientReducerTest, AveragesTheRanksGradients) {
  const ReducerCase c = GetParam();
  const data::TensorDataset data = testing_support::three_class_data(32, 4, 4);
  // The expected average, from both ranks' gradients computed here.
  std::vector<torch::Tensor> expected;
  for (int64_t rank = 0; rank < 2; ++rank) {
    Net net = make_net(9);
    rank_loss(net, data, rank, 0).backward();
    for (size_t i = 0; i < net->parameters().size(); ++i) {
      const torch::Tensor half = net->parameters()[i].grad() / 2;
      if (rank == 0) expected.push_back(half); else expected[i] += half;
    }
  }
  std::vector<Net> nets{make_net(9), make_net(9)};
  std::vector<std::vector<torch::Tensor>> grads(2);
  std::vector<std::vector<double>> control(2);
  std::vector<size_t> buckets(2), early(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const int64_t rank = group->rank();
    Net& net = nets[static_cast<size_t>(rank)];
    detail::GradientReducer reducer(
        group, net->parameters(),
        distributed::DataParallelOptions().bucket_bytes(c.bucket_bytes).overlap(c.overlap), 1);
    buckets[static_cast<size_t>(rank)] = reducer.bucket_count();
    reducer.prepare(/*fresh=*/true, {static_cast<double>(rank + 1)});
    rank_loss(net, data, rank, 0).backward();
    control[static_cast<size_t>(rank)] = reducer.finish();
    early[static_cast<size_t>(rank)] = reducer.sent_during_backward();
    for (const auto& p : net->parameters()) grads[static_cast<size_t>(rank)].push_back(p.grad().clone());
  });
  for (size_t rank = 0; rank < 2; ++rank) {
    expect_close(grads[rank], expected, 1e-6, "rank " + std::to_string(rank));
    EXPECT_EQ(control[rank], std::vector<double>{3.0});
  }
  // fc1 (4x16 + 16) and fc2 (16x3 + 3) as floats: 320 and 204 bytes.
  EXPECT_EQ(buckets[0], c.bucket_bytes < 100 ? 4u : 1u);
  // With overlap every bucket starts from a hook, while backward runs; the
  // last one, which also carries the control values, may too.
  for (size_t rank = 0; rank < 2; ++rank) {
    EXPECT_EQ(early[rank], c.overlap ? buckets[rank] : 0u) << "rank " << rank;
  }
}

TEST_P(GradientReducerTest, KeepsWhatEarlierBatchesAccumulated) {
  const ReducerCase c = GetParam();
  const data::TensorDataset data = testing_support::three_class_data(32, 4, 5);
  std::vector<torch::Tensor> expected;
  for (int64_t rank = 0; rank < 2; ++rank) {
    Net net = make_net(8);
    rank_loss(net, data, rank, 0).backward();
    rank_loss(net, data, rank, 1).backward();
    for (size_t i = 0; i < net->parameters().size(); ++i) {
      const torch::Tensor half = net->parameters()[i].grad() / 2;
      if (rank == 0) expected.push_back(half); else expected[i] += half;
    }
  }
  std::vector<Net> nets{make_net(8), make_net(8)};
  std::vector<std::vector<torch::Tensor>> grads(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const int64_t rank = group->rank();
    Net& net = nets[static_cast<size_t>(rank)];
    detail::GradientReducer reducer(
        group, net->parameters(),
        distributed::DataParallelOptions().bucket_bytes(c.bucket_bytes).overlap(c.overlap), 0);
    rank_loss(net, data, rank, 0).backward();  // not armed: kept in .grad only
    reducer.prepare(/*fresh=*/false, {});
    rank_loss(net, data, rank, 1).backward();
    reducer.finish();
    for (const auto& p : net->parameters()) grads[static_cast<size_t>(rank)].push_back(p.grad().clone());
  });
  expect_close(grads[0], expected, 1e-6, "rank 0");
  expect_close(grads[1], expected, 1e-6, "rank 1");
}

INSTANTIATE_TEST_SUITE_P(Buckets, GradientReducerTest,
                         testing::Values(ReducerCase{64, true}, ReducerCase{1 << 20, true},
                                         ReducerCase{64, false}));

// --- fit and evaluate ----------------------------------------------------------

struct FitResult {
  std::vector<torch::Tensor> parameters;
  std::vector<std::map<std::string, double>> history;
  std::map<std::string, double> evaluation;
};

// Which kind of source serves the fit's data: the same examples in the same
// order from each.
enum class Feed { epochs, torch_dataset, prefetched };

struct FitSettings {
  int64_t batch = 8;        // per rank
  int64_t accumulate = 1;
  distributed::DataParallelOptions parallel;
  Feed feed = Feed::epochs;
};

const data::TensorDataset& training_set() {
  static const data::TensorDataset data = testing_support::three_class_data(96, 4, 1);
  return data;
}
const data::TensorDataset& validation_set() {
  // Odd: shards of 15 and 14.
  static const data::TensorDataset data = testing_support::three_class_data(29, 4, 2);
  return data;
}

// The rows of a TensorDataset as a map-style torch::data dataset.
struct Rows : torch::data::datasets::Dataset<Rows> {
  explicit Rows(data::TensorDataset all) : rows(std::move(all)) {}
  torch::data::Example<> get(size_t index) override {
    const auto i = static_cast<int64_t>(index);
    return {rows.inputs[i], rows.targets[i]};
  }
  torch::optional<size_t> size() const override { return static_cast<size_t>(rows.size()); }
  data::TensorDataset rows;
};

// The training data, reshuffled every epoch, as `feed` serves it.
data::DataSource training_source(Feed feed, int64_t batch) {
  switch (feed) {
    case Feed::torch_dataset: return data::TorchDataset(Rows(training_set()), batch).seed(3);
    case Feed::prefetched: return data::prefetch(data::Epochs(training_set(), batch).seed(3));
    case Feed::epochs: break;
  }
  return data::Epochs(training_set(), batch).seed(3);
}

// The validation data in its order, as `feed` serves it.
data::DataSource validation_source(Feed feed, int64_t batch) {
  switch (feed) {
    case Feed::torch_dataset:
      return data::TorchDataset(Rows(validation_set()), batch).shuffle(false);
    case Feed::prefetched: return data::prefetch(data::Batches(validation_set(), batch));
    case Feed::epochs: break;
  }
  return data::Batches(validation_set(), batch);
}

// One fit of 3 epochs: data-parallel when `group` is given (each rank
// starting from its own weights, which the broadcast makes rank 0's).
FitResult fit_run(Net net, const FitSettings& settings,
            std::shared_ptr<distributed::ProcessGroup> group) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  TrainingLoop loop(training_source(settings.feed, settings.batch),
                    validation_source(settings.feed, 8), optimizer, losses::cross_entropy,
                    {metrics::accuracy(), metrics::matthews_correlation()});
  loop.handle_signals(false).accumulate_gradients(settings.accumulate);
  loop.data_parallel(group, settings.parallel);
  loop.fit(net, 3);
  FitResult run{copies(net->parameters()), loop.state().history, {}};
  run.evaluation = loop.evaluate(net, validation_source(settings.feed, 5));
  return run;
}

// The same fit on 2 ranks (batch b each) and on one process (batch 2b).
void expect_data_parallel_equals_one_process(const FitSettings& settings) {
  FitSettings single = settings;
  single.batch = 2 * settings.batch;
  const FitResult whole = fit_run(make_net(7), single, nullptr);
  std::vector<Net> nets{make_net(7), make_net(70)};
  std::vector<FitResult> ranks(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    ranks[rank] = fit_run(nets[rank], settings, group);
  });
  for (size_t rank = 0; rank < 2; ++rank) {
    const std::string who = "rank " + std::to_string(rank);
    expect_close(ranks[rank].parameters, whole.parameters, 2e-5, who);
    ASSERT_EQ(ranks[rank].history.size(), whole.history.size()) << who;
    for (size_t epoch = 0; epoch < whole.history.size(); ++epoch) {
      for (const auto& [name, value] : whole.history[epoch]) {
        ASSERT_EQ(ranks[rank].history[epoch].count(name), 1u) << who << " " << name;
        EXPECT_NEAR(ranks[rank].history[epoch].at(name), value, 1e-5)
            << who << ", epoch " << epoch << ", " << name;
      }
    }
    for (const auto& [name, value] : whole.evaluation) {
      EXPECT_NEAR(ranks[rank].evaluation.at(name), value, 1e-5) << who << " evaluate " << name;
    }
  }
  // Both ranks made the very same updates.
  expect_close(ranks[1].parameters, ranks[0].parameters, 0.0, "rank 1 against rank 0");
}

TEST(DataParallelFitTest, EqualsOneProcessWithTheDoubledBatch) {
  expect_data_parallel_equals_one_process({});
}

TEST(DataParallelFitTest, EqualsOneProcessWithSmallBucketsAndNoOverlap) {
  FitSettings settings;
  settings.parallel.bucket_bytes(64).overlap(false);
  expect_data_parallel_equals_one_process(settings);
  settings.parallel.overlap(true);
  expect_data_parallel_equals_one_process(settings);
}

// TorchDataset and prefetch shard as Epochs and Batches do: the data-parallel
// fit (training padded, validation and evaluate split) matches one process.
TEST(DataParallelFitTest, EqualsOneProcessFromATorchDataset) {
  FitSettings settings;
  settings.feed = Feed::torch_dataset;
  expect_data_parallel_equals_one_process(settings);
}

TEST(DataParallelFitTest, EqualsOneProcessFromAPrefetchedSource) {
  FitSettings settings;
  settings.feed = Feed::prefetched;
  expect_data_parallel_equals_one_process(settings);
}

TEST(DataParallelFitTest, EqualsOneProcessWhenAccumulatingGradients) {
  FitSettings settings;
  settings.batch = 4;
  settings.accumulate = 2;
  FitSettings single = settings;
  single.batch = 8;  // 2 ranks x 4 = 8 a batch, accumulated over 2 as well
  const FitResult whole = fit_run(make_net(7), single, nullptr);
  std::vector<Net> nets{make_net(7), make_net(7)};
  std::vector<FitResult> ranks(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    ranks[rank] = fit_run(nets[rank], settings, group);
  });
  expect_close(ranks[0].parameters, whole.parameters, 2e-5, "rank 0");
  expect_close(ranks[1].parameters, whole.parameters, 2e-5, "rank 1");
}

// Counts the events it sees.
struct Counter : Callback {
  explicit Counter(bool zero_only) : zero_only(zero_only) {}
  void on_event(Event, TrainingLoop&) override { ++events; }
  bool rank_zero_only() const override { return zero_only; }
  bool zero_only;
  int events = 0;
};

// One rank's loss overflows the scaled gradients (rank 1's third batch of
// each epoch, 10^30 times larger): the averaged gradients carry the inf to
// every rank, and every rank skips that update, backs its scale off and
// counts no step for it, so the ranks stay equal.
TEST(DataParallelFitTest, AnOverflowOnOneRankSkipsTheUpdateOnEvery) {
  std::vector<Net> nets{make_net(5), make_net(5)};
  std::vector<std::vector<int64_t>> skipped(2);
  std::vector<std::vector<torch::Tensor>> parameters(2);
  std::vector<double> scales(2);
  std::vector<int64_t> steps(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    torch::optim::SGD optimizer(nets[rank]->parameters(), torch::optim::SGDOptions(0.1));
    TrainingLoop loop(data::Epochs(training_set(), 8).seed(3), nullptr, optimizer,
                      losses::cross_entropy);
    loop.handle_signals(false).data_parallel(group);
    loop.mixed_precision(MixedPrecisionOptions(torch::kBFloat16)
                             .loss_scaling(LossScalerOptions().init_scale(std::ldexp(1.0, 100))));
    loop.step([](LoopState& state, const Model& net, const LossFunction& loss) {
      state.outputs = net.forward(state.inputs);
      state.loss = loss(state.outputs, state.targets);
      if (state.rank == 1 && state.batch == 2) state.loss = state.loss * 1e30;
    });
    loop.add_callback(callbacks::lambda([&skipped, rank](Event event, TrainingLoop& l) {
      if (event == Event::update_start && l.state().update_skipped) {
        skipped[rank].push_back(l.state().epoch * 100 + l.state().batch);
      }
    }));
    loop.fit(nets[rank], 2);
    parameters[rank] = copies(nets[rank]->parameters());
    scales[rank] = loop.loss_scaler()->scale_value();
    steps[rank] = loop.state().global_step;
  });
  EXPECT_EQ(skipped[0], (std::vector<int64_t>{2, 102}));
  EXPECT_EQ(skipped[1], skipped[0]);
  EXPECT_EQ(scales[0], std::ldexp(1.0, 98));
  EXPECT_EQ(scales[1], scales[0]);
  EXPECT_EQ(steps[0], 2 * 6 - 2);  // 48 examples a rank, batches of 8
  EXPECT_EQ(steps[1], steps[0]);
  expect_close(parameters[1], parameters[0], 0.0, "rank 1 against rank 0");
}

TEST(DataParallelFitTest, RankZeroOnlyCallbacksRunOnRankZero) {
  std::vector<int> everywhere(2), zero_only(2);
  std::vector<int64_t> ranks(2), worlds(2);
  std::vector<Net> nets{make_net(1), make_net(1)};
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    auto all = std::make_shared<Counter>(false);
    auto zero = std::make_shared<Counter>(true);
    torch::optim::SGD optimizer(nets[rank]->parameters(), 0.1);
    TrainingLoop loop(data::Epochs(training_set(), 16), nullptr, optimizer, losses::cross_entropy,
                      {}, {all, zero});
    loop.handle_signals(false).data_parallel(group);
    loop.fit(nets[rank], 1);
    everywhere[rank] = all->events;
    zero_only[rank] = zero->events;
    ranks[rank] = loop.state().rank;
    worlds[rank] = loop.state().world_size;
  });
  EXPECT_GT(everywhere[0], 0);
  EXPECT_EQ(everywhere[1], everywhere[0]);
  EXPECT_EQ(zero_only[0], everywhere[0]);
  EXPECT_EQ(zero_only[1], 0);
  EXPECT_EQ(ranks, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(worlds, (std::vector<int64_t>{2, 2}));
}

TEST(DataParallelFitTest, MetricThatCannotBeCombinedFailsAtTheStart) {
  struct Local : Metric {
    std::string name() const override { return "local"; }
    void reset() override {}
    void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {}
    double compute() const override { return 0; }
    std::shared_ptr<Metric> clone() const override { return std::make_shared<Local>(); }
  };
  std::vector<Net> nets{make_net(1), make_net(1)};
  std::vector<std::string> errors(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    torch::optim::SGD optimizer(nets[rank]->parameters(), 0.1);
    TrainingLoop loop(data::Epochs(training_set(), 16), nullptr, optimizer, losses::cross_entropy,
                      {std::make_shared<Local>()});
    loop.handle_signals(false).data_parallel(group);
    try {
      loop.fit(nets[rank], 1);
    } catch (const Error& e) {
      errors[rank] = e.what();
    }
  });
  EXPECT_THAT(errors[0], HasSubstr("metric local: all_reduce() is not implemented"));
  EXPECT_THAT(errors[1], HasSubstr("metric local: all_reduce() is not implemented"));
}

TEST(DataParallelFitTest, SourceThatCannotBeShardedSaysSo) {
  struct Fixed : data::BatchSource {
    void start_epoch(int64_t) override {}
    int64_t batch_count() const override { return 1; }
    data::Batch batch(int64_t) const override { return {torch::zeros({2, 4}), torch::zeros({2}, torch::kLong)}; }
  };
  std::vector<Net> nets{make_net(1), make_net(1)};
  std::vector<std::string> errors(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    torch::optim::SGD optimizer(nets[rank]->parameters(), 0.1);
    TrainingLoop loop(Fixed(), nullptr, optimizer, losses::cross_entropy);
    loop.handle_signals(false).data_parallel(group);
    try {
      loop.fit(nets[rank], 1);
    } catch (const Error& e) {
      errors[rank] = e.what();
    }
  });
  EXPECT_THAT(errors[0], HasSubstr("cannot be split among 2 processes (rank 0)"));
  EXPECT_THAT(errors[1], HasSubstr("cannot be split among 2 processes (rank 1)"));
}

TEST(DataParallelFitTest, CheckpointNeedsTheWorldSizeThatWroteIt) {
  TempDir dir;
  const std::string checkpoints = (dir.path / "checkpoints").string();
  std::vector<Net> nets{make_net(1), make_net(1)};
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    torch::optim::SGD optimizer(nets[rank]->parameters(), 0.1);
    TrainingLoop loop(data::Epochs(training_set(), 16), nullptr, optimizer, losses::cross_entropy,
                      {}, {callbacks::checkpoint(checkpoints)});
    loop.handle_signals(false).data_parallel(group);
    loop.fit(nets[rank], 1);
  });
  const auto names = checkpoint_names(checkpoints);
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(verify_checkpoint(checkpoints + "/" + names[0]).world_size, 2);
  Net net = make_net(1);
  torch::optim::SGD optimizer(net->parameters(), 0.1);
  TrainingLoop loop(data::Epochs(training_set(), 16), nullptr, optimizer, losses::cross_entropy);
  EXPECT_THAT([&] { loop.fit(net, 2, torch::kCPU, checkpoints); },
              ThrowsMessage<Error>(HasSubstr("written by a fit of 2 processes, this one has 1; "
                                             "resume with WORLD_SIZE=2")));
}

TEST(DataParallelFitTest, DataIsWholeAgainWithoutAGroup) {
  std::vector<Net> nets{make_net(1), make_net(1)};
  auto shared = std::make_shared<data::Epochs>(training_set(), 16);
  std::vector<int64_t> counts(2);
  run_ranks(2, [&](std::shared_ptr<distributed::ProcessGroup> group) {
    const auto rank = static_cast<size_t>(group->rank());
    torch::optim::SGD rank_optimizer(nets[rank]->parameters(), 0.1);
    // Rank 0's loop then trains on its own, on the same source.
    data::DataSource source = rank == 0 ? data::DataSource(shared)
                                        : data::DataSource(data::Epochs(training_set(), 16));
    TrainingLoop loop(source, nullptr, rank_optimizer, losses::cross_entropy);
    loop.handle_signals(false).data_parallel(group);
    loop.fit(nets[rank], 1);
    counts[rank] = loop.state().training_batch_count;
    if (rank == 0) {
      loop.data_parallel(nullptr);
      loop.fit(nets[rank], 1);
      counts[rank] = loop.state().training_batch_count;
    }
  });
  EXPECT_EQ(counts[1], 3);  // 48 of 96 examples in batches of 16
  EXPECT_EQ(counts[0], 6);  // all 96 again
}

}  // namespace
}  // namespace trainloop
