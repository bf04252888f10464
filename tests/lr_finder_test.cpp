#include "trainloop/lr_finder.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;

// A model with buffers (batch-norm statistics) as well as parameters.
struct NetImpl : torch::nn::Module {
  NetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(4, 8))),
        norm(register_module("norm", torch::nn::BatchNorm1d(8))),
        fc2(register_module("fc2", torch::nn::Linear(8, 3))) {}
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::relu(norm(fc1(x)))); }
  torch::nn::Linear fc1;
  torch::nn::BatchNorm1d norm;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Net);

data::TensorDataset make_dataset() {
  torch::manual_seed(7);
  torch::Tensor x = torch::randn({64, 4});
  // Learnable classes: the sign pattern of two inputs.
  torch::Tensor y = (x.select(1, 0) > 0).to(torch::kLong) + (x.select(1, 1) > 0).to(torch::kLong);
  return data::TensorDataset(x, y);
}

// Deep copies of every tensor that must survive lr_find unchanged.
struct Copy {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, double> numbers;
};

Copy copy_model(const Model& model) {
  Copy copy;
  for (const auto& [name, t] : model.named_parameters()) {
    copy.tensors["parameter " + name] = t.detach().clone();
    if (t.grad().defined()) copy.tensors["gradient " + name] = t.grad().clone();
  }
  for (const auto& [name, t] : model.named_buffers()) {
    copy.tensors["buffer " + name] = t.detach().clone();
  }
  return copy;
}

// The state key of parameter `p`: a string of the TensorImpl address in
// LibTorch 1.13, the address itself where a later version keys by pointer.
template <class Key>
Key state_key(const torch::Tensor& p) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << static_cast<void*>(p.unsafeGetTensorImpl());
    return text.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

// The optimizer's learning rates and state by parameter position; `read`
// knows the state type and copies its tensors.
template <class ParamState, class Read>
Copy copy_optimizer(torch::optim::Optimizer& optimizer, Read read) {
  using Key = typename std::decay_t<decltype(optimizer.state())>::key_type;
  Copy copy;
  size_t position = 0;
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    auto& group = optimizer.param_groups()[g];
    copy.numbers["lr " + std::to_string(g)] = group.options().get_lr();
    for (const auto& p : group.params()) {
      const auto found = optimizer.state().find(state_key<Key>(p));
      if (found != optimizer.state().end()) {
        read(static_cast<ParamState&>(*found->second), copy, std::to_string(position));
      }
      ++position;
    }
  }
  copy.numbers["state entries"] = static_cast<double>(optimizer.state().size());
  return copy;
}

void expect_same(const Copy& before, const Copy& after) {
  ASSERT_EQ(before.tensors.size(), after.tensors.size());
  for (const auto& [name, tensor] : before.tensors) {
    ASSERT_EQ(after.tensors.count(name), 1u) << name;
    EXPECT_TRUE(torch::equal(tensor, after.tensors.at(name))) << name << " changed";
  }
  EXPECT_EQ(before.numbers, after.numbers);
}

struct LrFinderTest : testing::Test {
  fs::path directory;
  data::TensorDataset train = make_dataset();
  Net net;

  void SetUp() override {
    directory = fs::temp_directory_path() /
                ("lr_finder_test_" + std::to_string(::getpid()) + "_" +
                 testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(directory);
    fs::create_directories(directory);
  }
  void TearDown() override { fs::remove_all(directory); }

  TrainingLoop make_loop(torch::optim::Optimizer& optimizer) {
    return TrainingLoop(data::Epochs(train, 8).seed(1), nullptr, optimizer,
                        losses::cross_entropy);
  }
};

auto read_sgd = [](torch::optim::SGDParamState& state, Copy& copy, const std::string& at) {
  copy.tensors["momentum " + at] = state.momentum_buffer().clone();
};
auto read_adam = [](torch::optim::AdamParamState& state, Copy& copy, const std::string& at) {
  copy.tensors["exp_avg " + at] = state.exp_avg().clone();
  copy.tensors["exp_avg_sq " + at] = state.exp_avg_sq().clone();
  copy.numbers["step " + at] = static_cast<double>(state.step());
};

TEST_F(LrFinderTest, RestoresModelAndSgdMomentumBitwise) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  TrainingLoop loop = make_loop(optimizer);
  loop.fit(net, 1);  // momentum buffers, gradients and batch-norm statistics exist now
  net->eval();
  const Copy model_before = copy_model(net);
  const Copy optimizer_before = copy_optimizer<torch::optim::SGDParamState>(optimizer, read_sgd);
  ASSERT_EQ(optimizer_before.numbers.at("state entries"), 6);
  ASSERT_EQ(optimizer_before.tensors.count("momentum 5"), 1u);

  const LrFinderResult result = lr_find(loop, net, LrFinderOptions().step_count(20).end_lr(1));
  EXPECT_EQ(result.rates.size(), 20u);

  expect_same(model_before, copy_model(net));
  expect_same(optimizer_before, copy_optimizer<torch::optim::SGDParamState>(optimizer, read_sgd));
  EXPECT_FALSE(net->is_training());
  EXPECT_EQ(optimizer.param_groups()[0].options().get_lr(), 0.05);
}

TEST_F(LrFinderTest, RestoresAdamState) {
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-3));
  TrainingLoop loop = make_loop(optimizer);
  loop.fit(net, 1);
  const Copy model_before = copy_model(net);
  const Copy optimizer_before = copy_optimizer<torch::optim::AdamParamState>(optimizer, read_adam);
  ASSERT_EQ(optimizer_before.numbers.at("step 0"), 8);  // one epoch of 8 batches

  lr_find(loop, net, LrFinderOptions().step_count(30));
  expect_same(model_before, copy_model(net));
  expect_same(optimizer_before, copy_optimizer<torch::optim::AdamParamState>(optimizer, read_adam));
  EXPECT_TRUE(net->is_training());
}

TEST_F(LrFinderTest, AFreshOptimizerStaysFreshAndEveryGroupKeepsItsRate) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(net->fc1->parameters());
  groups.emplace_back(net->fc2->parameters(), std::make_unique<torch::optim::SGDOptions>(0.3));
  torch::optim::SGD optimizer(std::move(groups), torch::optim::SGDOptions(0.01).momentum(0.5));
  TrainingLoop loop = make_loop(optimizer);
  const Copy model_before = copy_model(net);
  lr_find(loop, net, LrFinderOptions().step_count(10));
  EXPECT_TRUE(optimizer.state().empty());
  EXPECT_EQ(optimizer.param_groups()[0].options().get_lr(), 0.01);
  EXPECT_EQ(optimizer.param_groups()[1].options().get_lr(), 0.3);
  for (const auto& p : net->parameters()) EXPECT_FALSE(p.grad().defined());
  expect_same(model_before, copy_model(net));
}

TEST_F(LrFinderTest, RatesGrowExponentiallyFromStartToEnd) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop = make_loop(optimizer);
  const LrFinderResult result = lr_find(
      loop, net, LrFinderOptions().start_lr(1e-5).end_lr(1e-1).step_count(21).divergence_factor(1e9));
  ASSERT_EQ(result.rates.size(), 21u);  // 8 batches per epoch: the sweep ran into a third epoch
  EXPECT_FALSE(result.diverged);
  EXPECT_DOUBLE_EQ(result.rates.front(), 1e-5);
  EXPECT_NEAR(result.rates.back(), 1e-1, 1e-12);
  for (size_t i = 0; i < result.rates.size(); ++i) {
    EXPECT_NEAR(std::log10(result.rates[i]), -5 + 0.2 * static_cast<double>(i), 1e-9);
  }
  // fastai's smoothing with bias correction: the first smoothed loss is the loss.
  ASSERT_EQ(result.losses.size(), 21u);
  EXPECT_DOUBLE_EQ(result.smoothed_losses[0], result.losses[0]);
  const double average = 0.98 * (0.02 * result.losses[0]) + 0.02 * result.losses[1];
  EXPECT_NEAR(result.smoothed_losses[1], average / (1 - 0.98 * 0.98), 1e-12);
}

TEST_F(LrFinderTest, StopsEarlyOnDivergence) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop = make_loop(optimizer);
  const LrFinderResult result =
      lr_find(loop, net, LrFinderOptions().start_lr(1e-4).end_lr(1e8).step_count(100));
  EXPECT_TRUE(result.diverged);
  ASSERT_LT(result.rates.size(), 100u);
  ASSERT_GE(result.rates.size(), 2u);
  const double last = result.smoothed_losses.back();
  const double best = *std::min_element(result.smoothed_losses.begin(),
                                        result.smoothed_losses.end() - 1);
  EXPECT_TRUE(!std::isfinite(last) || last > 4 * best) << last << " vs best " << best;
  // Every earlier step was within the factor.
  for (size_t i = 1; i + 1 < result.smoothed_losses.size(); ++i) {
    const double so_far =
        *std::min_element(result.smoothed_losses.begin(), result.smoothed_losses.begin() + i);
    EXPECT_LE(result.smoothed_losses[i], 4 * so_far);
  }
}

TEST_F(LrFinderTest, SuggestionsLieInTheSweptRangeAndTheSvgIsWritten) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop = make_loop(optimizer);
  const fs::path svg = directory / "lr.svg";
  const LrFinderResult result = lr_find(
      loop, net, LrFinderOptions().start_lr(1e-4).end_lr(10).step_count(60).svg_path(svg.string()));
  const double low = result.rates.front(), high = result.rates.back();
  EXPECT_GE(result.suggested_steepest, low);
  EXPECT_LE(result.suggested_steepest, high);
  EXPECT_GE(result.suggested_min_div10, low / 10);
  EXPECT_LE(result.suggested_min_div10, high / 10);
  // The steepest suggestion is one of the rates swept; minimum/10 one tenth of one.
  EXPECT_NE(std::find(result.rates.begin(), result.rates.end(), result.suggested_steepest),
            result.rates.end());
  EXPECT_NE(std::find(result.rates.begin(), result.rates.end(), result.suggested_min_div10 * 10),
            result.rates.end());

  std::ifstream in(svg);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_THAT(text.str(), HasSubstr("smoothed training loss"));
  EXPECT_THAT(text.str(), HasSubstr("steepest "));
  EXPECT_THAT(text.str(), HasSubstr("minimum/10 "));
  EXPECT_THAT(text.str(), HasSubstr(">1e-4<"));  // log-axis tick labels
  EXPECT_THAT(text.str(), HasSubstr(">0.01<"));
}

TEST_F(LrFinderTest, RestoresAfterAFailingSweep) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  // A loss that fails on the third step, after two updates changed the model.
  int calls = 0;
  TrainingLoop loop(data::Epochs(train, 8), nullptr, optimizer,
                    [&](const torch::Tensor& out, const torch::Tensor& target) {
                      if (++calls == 3) throw std::runtime_error("bad batch");
                      return losses::cross_entropy(out, target);
                    });
  const Copy before = copy_model(net);
  EXPECT_THROW(lr_find(loop, net, LrFinderOptions().step_count(10)), std::exception);
  expect_same(before, copy_model(net));
  EXPECT_TRUE(optimizer.state().empty());
  EXPECT_EQ(optimizer.param_groups()[0].options().get_lr(), 0.1);
}

TEST_F(LrFinderTest, RejectsBadOptions) {
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop = make_loop(optimizer);
  EXPECT_THAT([&] { lr_find(loop, net, LrFinderOptions().start_lr(0)); },
              ThrowsMessage<Error>(HasSubstr("start_lr 0, expected a positive number")));
  EXPECT_THAT([&] { lr_find(loop, net, LrFinderOptions().start_lr(1).end_lr(0.5)); },
              ThrowsMessage<Error>(HasSubstr("end_lr 0.5, expected a finite number above start_lr 1")));
  EXPECT_THAT([&] { lr_find(loop, net, LrFinderOptions().step_count(1)); },
              ThrowsMessage<Error>(HasSubstr("step_count 1, expected at least 2")));
  EXPECT_THAT([&] { lr_find(loop, net, LrFinderOptions().smoothing(1)); },
              ThrowsMessage<Error>(HasSubstr("smoothing 1")));
  EXPECT_THAT([&] { lr_find(loop, net, LrFinderOptions().divergence_factor(1)); },
              ThrowsMessage<Error>(HasSubstr("divergence_factor 1")));
}

}  // namespace
}  // namespace trainloop
