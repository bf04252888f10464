#include "trainloop/callbacks/terminate_on_nan.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using callbacks::TerminateOnNanOptions;
using testing::HasSubstr;
using testing::ThrowsMessage;

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(3, 4));
    fc2 = register_module("fc2", torch::nn::Linear(4, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(fc1(x).relu()); }
  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};
};
TORCH_MODULE(Net);

struct TerminateOnNanTest : testing::Test {
  TerminateOnNanTest() {
    torch::manual_seed(3);
    path = std::filesystem::temp_directory_path() /
           fmt::format("terminate_on_nan_test_{}.log", testing::UnitTest::GetInstance()
                                                          ->current_test_info()
                                                          ->name());
  }
  ~TerminateOnNanTest() override { std::filesystem::remove(path); }

  Net model;
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.01)};
  // 6 training batches of 4 per epoch.
  data::TensorDataset train{torch::randn({24, 3}), torch::randn({24, 1})};
  std::filesystem::path path;
  bool fit_end_ran = false;

  // A log writer as a file-writing callback would be: one buffered line per
  // training batch, flushed only at fit_end.
  std::shared_ptr<Callback> logger() {
    auto file = std::make_shared<std::ofstream>(path);
    return callbacks::lambda([this, file](Event event, TrainingLoop& loop) {
      const LoopState& state = loop.state();
      if (event == Event::batch_end && state.phase == Phase::training) {
        *file << fmt::format("epoch {} batch {}\n", state.epoch + 1, state.batch + 1);
      } else if (event == Event::fit_end) {
        file->flush();
        fit_end_ran = true;
      }
    }, "logger");
  }

  std::vector<std::string> logged_lines() const {
    std::ifstream file(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(file, line);) lines.push_back(line);
    return lines;
  }

  // A loop whose loss is `value` at (epoch, batch), both 0-based.
  TrainingLoop loop_with_bad_loss(int64_t epoch, int64_t batch, double value,
                                  std::shared_ptr<Callback> guard) {
    TrainingLoop loop(data::Epochs(train, 4), nullptr, optimizer, losses::mse, {},
                      {logger(), std::move(guard)});
    loop.step([=](LoopState& state, const Model& m, const LossFunction& loss) {
      state.outputs = m.forward(state.inputs);
      state.loss = loss(state.outputs, state.targets);
      if (state.epoch == epoch && state.batch == batch) state.loss = state.loss * value;
    });
    return loop;
  }
};

std::vector<std::string> expected_lines(int64_t epochs, int64_t last_batch) {
  std::vector<std::string> lines;
  for (int64_t e = 1; e <= epochs; ++e) {
    for (int64_t b = 1; b <= (e == epochs ? last_batch : 6); ++b) {
      lines.push_back(fmt::format("epoch {} batch {}", e, b));
    }
  }
  return lines;
}

TEST_F(TerminateOnNanTest, NanLossNamesEpochAndBatch) {
  auto loop = loop_with_bad_loss(1, 4, kNan, callbacks::terminate_on_nan());
  EXPECT_THAT([&] { loop.fit(model, 3); },
              ThrowsMessage<Error>(HasSubstr("callback terminate_on_nan failed at batch_end: "
                                             "terminate_on_nan: loss is nan at epoch 2, batch 5")));
  EXPECT_TRUE(fit_end_ran);
  EXPECT_EQ(logged_lines(), expected_lines(2, 5));
}

TEST_F(TerminateOnNanTest, InfiniteLossesNameTheirSign) {
  auto positive = loop_with_bad_loss(0, 1, kInf, callbacks::terminate_on_nan());
  EXPECT_THAT([&] { positive.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr("loss is inf at epoch 1, batch 2")));
  // The first fit left non-finite weights behind; start from fresh ones.
  {
    torch::NoGradGuard no_grad;
    for (auto& parameter : model->parameters()) parameter.uniform_(-0.5, 0.5);
  }
  auto negative = loop_with_bad_loss(0, 2, -kInf, callbacks::terminate_on_nan());
  EXPECT_THAT([&] { negative.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr("loss is -inf at epoch 1, batch 3")));
}

TEST_F(TerminateOnNanTest, SparseChecksStillNameTheFirstBadBatch) {
  // Checked after batches 4 and 8 of the epoch (and at its end): the nan of
  // batch 5 is found after batch 8, so batches 6 to 8 still ran.
  auto loop = loop_with_bad_loss(
      0, 4, kNan, callbacks::terminate_on_nan(TerminateOnNanOptions().check_every_n_batches(4)));
  EXPECT_THAT([&] { loop.fit(model, 2); },
              ThrowsMessage<Error>(HasSubstr("failed at training_end: terminate_on_nan: loss is "
                                             "nan at epoch 1, batch 5")));
  EXPECT_EQ(logged_lines(), expected_lines(1, 6));
  EXPECT_TRUE(fit_end_ran);
}

TEST_F(TerminateOnNanTest, SparseChecksWithinAnEpoch) {
  auto loop = loop_with_bad_loss(
      0, 1, kNan, callbacks::terminate_on_nan(TerminateOnNanOptions().check_every_n_batches(3)));
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr("failed at batch_end: terminate_on_nan: loss is nan "
                                             "at epoch 1, batch 2")));
  EXPECT_EQ(logged_lines(), expected_lines(1, 3));
}

TEST_F(TerminateOnNanTest, InfiniteGradientNamesTheParameter) {
  int64_t epoch = 0;
  int64_t batch = 0;
  // The loss stays finite; only fc1.weight's gradient is replaced at batch 3.
  auto hook = model->fc1->weight.register_hook([&](torch::Tensor grad) {
    return epoch == 0 && batch == 2 ? torch::full_like(grad, kInf) : grad;
  });
  auto position = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event == Event::batch_start) {
      epoch = loop.state().epoch;
      batch = loop.state().batch;
    }
  });
  TrainingLoop loop(data::Epochs(train, 4), nullptr, optimizer, losses::mse, {},
                    {position, logger(),
                     callbacks::terminate_on_nan(TerminateOnNanOptions().check_gradients(true))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr(
                  "terminate_on_nan: gradient of fc1.weight is inf at epoch 1, batch 3")));
  EXPECT_TRUE(fit_end_ran);
  EXPECT_EQ(logged_lines(), expected_lines(1, 3));
  model->fc1->weight.remove_hook(hook);
}

TEST_F(TerminateOnNanTest, NanGradientWithSparseChecks) {
  int64_t batch = 0;
  auto hook = model->fc2->bias.register_hook([&](torch::Tensor grad) {
    return batch == 3 ? torch::full_like(grad, kNan) : grad;
  });
  auto position = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event == Event::batch_start) batch = loop.state().batch;
  });
  TrainingLoop loop(data::Epochs(train, 4), nullptr, optimizer, losses::mse, {},
                    {position, callbacks::terminate_on_nan(TerminateOnNanOptions()
                                                               .check_gradients(true)
                                                               .check_every_n_batches(5))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr("gradient of fc2.bias is nan at epoch 1, batch 4")));
  model->fc2->bias.remove_hook(hook);
}

TEST_F(TerminateOnNanTest, FiniteRunCompletes) {
  TrainingLoop loop(data::Epochs(train, 4), nullptr, optimizer, losses::mse, {},
                    {logger(), callbacks::terminate_on_nan(TerminateOnNanOptions()
                                                               .check_gradients(true)
                                                               .check_every_n_batches(4))});
  loop.accumulate_gradients(2);
  EXPECT_EQ(loop.fit(model, 2), FitStatus::completed);
  EXPECT_EQ(logged_lines(), expected_lines(2, 6));
}

TEST_F(TerminateOnNanTest, RejectsBadOptions) {
  EXPECT_THAT(
      [] { callbacks::terminate_on_nan(TerminateOnNanOptions().check_every_n_batches(0)); },
      ThrowsMessage<Error>(HasSubstr("check_every_n_batches is 0, expected >= 1")));
  EXPECT_EQ(callbacks::terminate_on_nan()->state_key(), "terminate_on_nan");
}

}  // namespace
}  // namespace trainloop
