#include "trainloop/callbacks/weight_averaging.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "support/test_support.h"
#include "trainloop/callbacks/checkpoint.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using callbacks::AnnealStrategy;
using callbacks::EmaOptions;
using callbacks::SwaOptions;
using callbacks::WeightAverage;
using nlohmann::json;
using testing::HasSubstr;
using testing::ThrowsMessage;
using testing_support::TempDir;
using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// The goldens come from float32 training in Python's torch 1.13; the C++
// loop on LibTorch 1.13 runs the same kernels, so training agrees to the bit
// or nearly, and the averages differ by rounding alone (e.g. the EMA's fused
// multiply-add against Python's separate products: up to 1.2e-7). Other
// LibTorch versions round some kernels differently (2.13: up to 4e-7 on
// the trained weights), so we allow 1e-5 relative with 1e-6 absolute for
// values near zero; an average off by one update is off by ~1e-3. The SWALR
// rates are double arithmetic written alike: 1e-15.
constexpr double kRelative = 1e-5;
constexpr double kAbsolute = 1e-6;

// The goldens' model: Linear, BatchNorm1d, ReLU, Linear.
struct NetImpl : torch::nn::Module {
  NetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(4, 6))),
        bn(register_module("bn", torch::nn::BatchNorm1d(6))),
        fc2(register_module("fc2", torch::nn::Linear(6, 2))) {}
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(bn(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::BatchNorm1d bn;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Net);

const json& goldens() {
  static const json parsed = [] {
    std::ifstream file(std::string(TRAINLOOP_SOURCE_DIR) +
                       "/tests/data/weight_averaging_goldens.json");
    if (!file) {
      throw std::runtime_error("run tests/python/make_weight_averaging_goldens.py");
    }
    return json::parse(file);
  }();
  return parsed;
}

torch::Tensor from_json(const json& tensor, torch::Dtype dtype = torch::kFloat) {
  return torch::tensor(tensor["values"].get<std::vector<double>>(), torch::kDouble)
      .reshape(tensor["shape"].get<std::vector<int64_t>>())
      .to(dtype);
}

// A model with the goldens' initial weights and buffers.
Net initial_net() {
  Net net;
  torch::NoGradGuard no_grad;
  const json& initial = goldens()["initial"];
  for (auto& item : net->named_parameters()) item.value().copy_(from_json(initial[item.key()]));
  for (auto& item : net->named_buffers()) {
    item.value().copy_(from_json(initial[item.key()], item.value().scalar_type()));
  }
  return net;
}

data::TensorDataset golden_data() {
  return {from_json(goldens()["inputs"]), from_json(goldens()["targets"])};
}

// Validation data of the same kind, one batch.
data::TensorDataset validation_data() {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({16, 4});
  return {x, torch::stack({x.select(1, 0) * x.select(1, 1), x.select(1, 2)}, 1)};
}

Named named_parameters(const Net& net) {
  Named out;
  for (const auto& item : net->named_parameters()) out.emplace_back(item.key(), item.value());
  return out;
}

Named named_buffers(const Net& net) {
  Named out;
  for (const auto& item : net->named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

Named clone(const Named& named) {
  Named out;
  for (const auto& [name, tensor] : named) out.emplace_back(name, tensor.detach().clone());
  return out;
}

// Every tensor of `actual` against the golden of its name.
void expect_close(const Named& actual, const json& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [name, tensor] : actual) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(expected.contains(name));
    const torch::Tensor want = from_json(expected[name], torch::kDouble);
    const torch::Tensor got = tensor.detach().cpu().to(torch::kDouble);
    ASSERT_EQ(got.sizes(), want.sizes());
    const double excess = ((got - want).abs() - (kAbsolute + kRelative * want.abs())).max().item<double>();
    EXPECT_LE(excess, 0) << "got " << got << "\nexpected " << want;
  }
}

void expect_bitwise_equal(const Named& a, const Named& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first << " differs";
  }
}

// The goldens' optimizer, loss and batches (in order) around `callbacks`.
struct GoldenRun {
  Net model = initial_net();
  torch::optim::SGD optimizer{model->parameters(),
                              torch::optim::SGDOptions(goldens()["learning_rate"].get<double>())
                                  .momentum(goldens()["momentum"].get<double>())};
  TrainingLoop loop;

  explicit GoldenRun(std::vector<std::shared_ptr<Callback>> callbacks,
                     data::DataSource validation = nullptr)
      : loop(data::Epochs(golden_data(), goldens()["batch_size"].get<int64_t>()).shuffle(false),
             std::move(validation), optimizer, losses::mse, {}, std::move(callbacks)) {
    loop.handle_signals(false);
  }
};

TEST(WeightAveragingTest, EmaMatchesAveragedModelGoldens) {
  ASSERT_EQ(goldens()["ema"].size(), 3u);
  for (const json& c : goldens()["ema"]) {
    SCOPED_TRACE(c["decay"].dump() + (c["warmup"].get<bool>() ? " warm-up" : "") + " every " +
                 c["every_n_steps"].dump());
    auto ema = callbacks::ema(EmaOptions()
                                  .decay(c["decay"].get<double>())
                                  .warmup(c["warmup"].get<bool>())
                                  .every_n_steps(c["every_n_steps"].get<int64_t>())
                                  .include_buffers(c["include_buffers"].get<bool>()));
    GoldenRun run({ema});
    ASSERT_EQ(run.loop.fit(run.model, c["epochs"].get<int64_t>()), FitStatus::completed);
    // The training itself first: the averages can only agree if it does.
    expect_close(named_parameters(run.model), c["model_parameters"]);
    expect_close(ema->averaged_parameters(), c["parameters"]);
    expect_close(ema->averaged_buffers(), c["buffers"]);
    EXPECT_EQ(ema->updates(), c["updates"].get<int64_t>());
  }
}

TEST(WeightAveragingTest, SwaMatchesSwaUtilsGoldens) {
  ASSERT_EQ(goldens()["swa"].size(), 3u);
  for (const json& c : goldens()["swa"]) {
    SCOPED_TRACE(c.dump().substr(0, 120));
    auto swa = callbacks::swa(
        SwaOptions(c["swa_start"].get<int64_t>())
            .swa_lr(c["swa_lr"].get<double>())
            .anneal_epochs(c["anneal_epochs"].get<int64_t>())
            .anneal_strategy(c["anneal_strategy"] == "cos" ? AnnealStrategy::cos
                                                            : AnnealStrategy::linear));
    std::vector<double> rates;
    auto record = callbacks::lambda([&](Event event, TrainingLoop& loop) {
      if (event == Event::training_start) rates.push_back(loop.state().learning_rate());
    });
    GoldenRun run({swa, record});
    ASSERT_EQ(run.loop.fit(run.model, c["epochs"].get<int64_t>()), FitStatus::completed);
    const auto expected_rates = c["rates"].get<std::vector<double>>();
    ASSERT_EQ(rates.size(), expected_rates.size());
    for (size_t i = 0; i < rates.size(); ++i) {
      EXPECT_NEAR(rates[i], expected_rates[i], 1e-15) << "epoch " << i;
    }
    EXPECT_EQ(swa->updates(), c["updates"].get<int64_t>());
    expect_close(swa->averaged_parameters(), c["parameters"]);
    // fit_end put the average into the model and recomputed its batch norm.
    expect_close(named_parameters(run.model), c["parameters"]);
    expect_close(named_buffers(run.model), c["buffers"]);
    EXPECT_TRUE(swa->averaged_buffers().empty());
  }
}

// The loss of `weights` (parameters and buffers by name) on `data`, by hand.
double loss_of(const Named& weights, const data::TensorDataset& data) {
  Net net;
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : weights) {
    if (auto* parameter = net->named_parameters().find(name)) {
      parameter->copy_(tensor);
    } else {
      net->named_buffers()[name].copy_(tensor);
    }
  }
  net->eval();
  return torch::mse_loss(net(data.inputs), data.targets).item<double>();
}

TEST(WeightAveragingTest, EmaValidatesWithTheAverageAndTrainsOnTheRawWeights) {
  const data::TensorDataset validation = validation_data();
  auto ema = callbacks::ema(EmaOptions().decay(0.8));
  // At each training_end: the average the validation after it must use,
  // and the raw weights training goes on from.
  std::vector<Named> averages;
  std::vector<Named> raws;
  auto snapshot = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event != Event::training_end) return;
    Named average = clone(ema->averaged_parameters());
    for (auto& buffer : clone(ema->averaged_buffers())) average.push_back(std::move(buffer));
    averages.push_back(std::move(average));
    Named raw = clone(loop.model().named_parameters());
    for (auto& buffer : clone(loop.model().named_buffers())) raw.push_back(std::move(buffer));
    raws.push_back(std::move(raw));
  });
  GoldenRun run({ema, snapshot}, data::Batches(validation, 16));
  ASSERT_EQ(run.loop.fit(run.model, 3), FitStatus::completed);
  const auto& history = run.loop.state().history;
  ASSERT_EQ(history.size(), 3u);
  for (size_t epoch = 0; epoch < history.size(); ++epoch) {
    SCOPED_TRACE(epoch);
    const double val_loss = history[epoch].at("val_loss");
    const double by_hand = loss_of(averages[epoch], validation);
    EXPECT_NEAR(val_loss, by_hand, 1e-6 * std::abs(by_hand));
    // The raw weights would have given another value.
    EXPECT_GT(std::abs(loss_of(raws[epoch], validation) - by_hand), 1e-4);
  }
  // Swapped back after each validation: the model ends with its raw weights.
  Named final_raw = clone(run.loop.model().named_parameters());
  for (auto& buffer : clone(run.loop.model().named_buffers())) final_raw.push_back(std::move(buffer));
  expect_bitwise_equal(final_raw, raws.back());
  // evaluate also uses the average and gives the raw weights back.
  const auto evaluated = run.loop.evaluate(run.model, data::Batches(validation, 16));
  EXPECT_NEAR(evaluated.at("loss"), loss_of(averages.back(), validation),
              1e-6 * loss_of(averages.back(), validation));
  Named after_evaluate = clone(run.loop.model().named_parameters());
  for (auto& buffer : clone(run.loop.model().named_buffers())) after_evaluate.push_back(std::move(buffer));
  expect_bitwise_equal(after_evaluate, raws.back());
}

TEST(WeightAveragingTest, EmaAppliesTheAverageAtTheEndWhenAsked) {
  auto ema = callbacks::ema(EmaOptions().decay(0.8).apply_at_end(true));
  GoldenRun run({ema});
  run.loop.fit(run.model, 1);
  EXPECT_EQ(ema->updates(), 5);
  expect_bitwise_equal(named_parameters(run.model), ema->averaged_parameters());
  Named buffers = named_buffers(run.model);
  expect_bitwise_equal(buffers, ema->averaged_buffers());
}

TEST(WeightAveragingTest, EmaLeavesTheAverageAloneAtASkippedUpdate) {
  auto ema = callbacks::ema(EmaOptions().decay(0.8));
  // As the loss scaler would: update 3's update_skipped is set before
  // update_start reaches the average (this stand-in does not stop the
  // optimizer, so only the average's reaction is tested).
  auto skip = callbacks::lambda([](Event event, TrainingLoop& loop) {
    LoopState& state = loop.state();
    if (event == Event::batch_start) state.update_skipped = false;
    if (event == Event::update_start && state.global_step == 2) state.update_skipped = true;
  });
  Named before;
  std::vector<bool> changed;
  auto watch = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (loop.state().phase != Phase::training) return;
    if (event == Event::batch_start) before = clone(ema->averaged_parameters());
    if (event != Event::batch_end) return;
    const Named after = ema->averaged_parameters();
    bool differs = false;
    for (size_t i = 0; i < after.size(); ++i) differs |= !torch::equal(after[i].second, before[i].second);
    changed.push_back(differs);
  });
  GoldenRun run({skip, ema, watch});
  run.loop.fit(run.model, 1);
  EXPECT_EQ(changed, std::vector<bool>({true, true, false, true, true}));
  EXPECT_EQ(ema->updates(), 4);
}

// Stops the fit (as a kill would, but in-process) after `step` updates.
std::shared_ptr<Callback> stop_after(int64_t step) {
  return callbacks::lambda(
      [step](Event event, TrainingLoop& loop) {
        if (event == Event::batch_end && loop.state().global_step == step) {
          loop.state().stop_requested = true;
        }
      },
      "stop_after");
}

struct Outcome {
  Named average;
  Named model;
  int64_t updates = 0;
  std::vector<std::map<std::string, double>> history;
  double rate = 0;
};

// A fit with `make_average()` and checkpoints into `dir`: uninterrupted
// (`stop_step` 0), or stopped after `stop_step` updates, then resumed into a
// model with other weights.
Outcome fit_with_checkpoints(const std::function<std::shared_ptr<WeightAverage>()>& make_average,
                             const fs::path& dir, callbacks::CheckpointOptions options,
                             int64_t epochs, int64_t stop_step) {
  const data::TensorDataset validation = validation_data();
  auto run_once = [&](std::vector<std::shared_ptr<Callback>> extra, bool resume,
                      bool disturb) -> Outcome {
    auto average = make_average();
    extra.insert(extra.begin(), average);
    extra.push_back(callbacks::checkpoint(options.directory((dir / "checkpoints").string())));
    GoldenRun run(std::move(extra), data::Batches(validation, 16));
    if (disturb) {
      torch::NoGradGuard no_grad;
      for (auto& p : run.model->parameters()) p.add_(1.0);
    }
    if (resume) {
      run.loop.fit(run.model, epochs, torch::kCPU, (dir / "checkpoints").string());
      EXPECT_FALSE(run.loop.state().resumed_from.empty());
    } else {
      run.loop.fit(run.model, epochs);
    }
    Named model = clone(named_parameters(run.model));
    for (auto& buffer : clone(named_buffers(run.model))) model.push_back(std::move(buffer));
    Named kept = clone(average->averaged_parameters());
    for (auto& buffer : clone(average->averaged_buffers())) kept.push_back(std::move(buffer));
    return {kept, model, average->updates(), run.loop.state().history,
            run.loop.state().learning_rate()};
  };
  if (stop_step == 0) return run_once({}, false, false);
  run_once({stop_after(stop_step)}, false, false);
  return run_once({}, true, true);
}

void expect_same(const Outcome& resumed, const Outcome& reference) {
  expect_bitwise_equal(resumed.average, reference.average);
  expect_bitwise_equal(resumed.model, reference.model);
  EXPECT_EQ(resumed.updates, reference.updates);
  EXPECT_EQ(resumed.history, reference.history);
  EXPECT_EQ(resumed.rate, reference.rate);
}

TEST(WeightAveragingTest, EmaResumesBitForBit) {
  auto make = [] { return callbacks::ema(EmaOptions().decay(0.9).warmup(true)); };
  TempDir scratch;
  const auto every_step = callbacks::CheckpointOptions().every_n_steps(1).keep_last(1);
  const Outcome reference = fit_with_checkpoints(make, scratch.path / "reference", every_step, 3, 0);
  ASSERT_EQ(reference.updates, 15);
  {
    SCOPED_TRACE("inside an epoch");
    expect_same(fit_with_checkpoints(make, scratch.path / "inside", every_step, 3, 7), reference);
  }
  {
    // The checkpoint at the end of epoch 2 is written after a validation
    // with the average: it must hold the raw weights.
    SCOPED_TRACE("at an epoch end");
    const auto every_epoch = callbacks::CheckpointOptions().every_n_epochs(1).on_interrupt(false);
    expect_same(fit_with_checkpoints(make, scratch.path / "epoch", every_epoch, 3, 12), reference);
  }
}

TEST(WeightAveragingTest, SwaResumesBitForBit) {
  auto make = [] {
    return callbacks::swa(SwaOptions(1).swa_lr(0.01).anneal_epochs(2).anneal_strategy(
        AnnealStrategy::linear));
  };
  TempDir scratch;
  const auto every_step = callbacks::CheckpointOptions().every_n_steps(1).keep_last(1);
  const Outcome reference = fit_with_checkpoints(make, scratch.path / "reference", every_step, 4, 0);
  ASSERT_EQ(reference.updates, 3);
  // After epoch 1's last update (before its average and rate step), and
  // inside epoch 2.
  for (const int64_t stop : {10, 12}) {
    SCOPED_TRACE(stop);
    expect_same(fit_with_checkpoints(make, scratch.path / std::to_string(stop), every_step, 4, stop),
                reference);
  }
}

TEST(WeightAveragingTest, RejectsBadOptions) {
  using callbacks::ema;
  using callbacks::swa;
  EXPECT_THAT([] { ema(EmaOptions().decay(1.5)); },
              ThrowsMessage<Error>(HasSubstr("ema: decay is 1.5, expected 0 <= decay <= 1")));
  EXPECT_THAT([] { ema(EmaOptions().decay(std::nan(""))); },
              ThrowsMessage<Error>(HasSubstr("decay is nan, expected 0 <= decay <= 1")));
  EXPECT_THAT([] { ema(EmaOptions().every_n_steps(0)); },
              ThrowsMessage<Error>(HasSubstr("ema: every_n_steps is 0, expected >= 1")));
  EXPECT_THAT([] { swa(SwaOptions()); },
              ThrowsMessage<Error>(HasSubstr("swa: swa_start is not set")));
  EXPECT_THAT([] { swa(SwaOptions(-1)); },
              ThrowsMessage<Error>(HasSubstr("swa: swa_start is -1, expected >= 0")));
  EXPECT_THAT([] { swa(SwaOptions(0).swa_lr(0)); },
              ThrowsMessage<Error>(HasSubstr("swa: swa_lr is 0, expected > 0")));
  EXPECT_THAT([] { swa(SwaOptions(0).anneal_epochs(-1)); },
              ThrowsMessage<Error>(HasSubstr("swa: anneal_epochs is -1, expected >= 0")));
  EXPECT_EQ(ema()->state_key(), "ema:decay=0.9999");
  EXPECT_EQ(ema(EmaOptions().decay(0.99).warmup(true).every_n_steps(4).include_buffers(false))
                ->state_key(),
            "ema:decay=0.99,warmup,every_n_steps=4,parameters_only");
  EXPECT_EQ(swa(SwaOptions(3))->state_key(), "swa");
}

TEST(WeightAveragingTest, CopyToNeedsAnAverageOfTheSameModel) {
  auto ema = callbacks::ema(EmaOptions().decay(0.5));
  Net net = initial_net();
  EXPECT_THAT([&] { ema->copy_to(net); }, ThrowsMessage<Error>(HasSubstr("ema: no average yet")));
  GoldenRun run({ema});
  run.loop.fit(run.model, 1);
  ema->copy_to(net);
  expect_bitwise_equal(named_parameters(net), ema->averaged_parameters());
  torch::nn::Linear other(4, 6);
  EXPECT_THAT([&] { ema->copy_to(other); },
              ThrowsMessage<Error>(HasSubstr("ema: the model has 2 parameters and buffers, the average 9")));
}

}  // namespace
}  // namespace trainloop
