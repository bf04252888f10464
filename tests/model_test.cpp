#include "trainloop/model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;

struct TwoLayerImpl : torch::nn::Module {
  TwoLayerImpl() : first(register_module("first", torch::nn::Linear(4, 8))),
                   second(register_module("second", torch::nn::Linear(8, 3))) {}
  torch::Tensor forward(torch::Tensor x) { return second(torch::relu(first(x))); }
  torch::nn::Linear first, second;
};
TORCH_MODULE(TwoLayer);

TEST(ModelTest, AcceptsHoldersPointersAndAnyModule) {
  TwoLayer holder;
  const auto x = torch::randn({2, 4});
  const auto expected = holder->forward(x);
  EXPECT_TRUE(Model(holder).forward(x).equal(expected));
  EXPECT_TRUE(Model(holder.ptr()).forward(x).equal(expected));
  EXPECT_TRUE(Model(torch::nn::AnyModule(holder)).forward(x).equal(expected));
  std::shared_ptr<torch::nn::Module> base = holder.ptr();
  EXPECT_TRUE(Model(base, [&](const torch::Tensor& t) { return holder->forward(t); })
                  .forward(x).equal(expected));
  EXPECT_EQ(Model(holder).parameters().size(), 4u);
  EXPECT_EQ(Model(holder).named_parameters()[0].first, "first.weight");
}

TEST(ModelTest, TrainSwitchesMode) {
  TwoLayer holder;
  Model model(holder);
  model.train(false);
  EXPECT_FALSE(holder->is_training());
  model.train(true);
  EXPECT_TRUE(holder->is_training());
}

TEST(ModelTest, RejectsEmptyModules) {
  EXPECT_THAT([] { Model{torch::nn::AnyModule()}; },
              testing::ThrowsMessage<Error>(HasSubstr("AnyModule is empty")));
  EXPECT_THAT([] { Model(std::shared_ptr<torch::nn::Module>(), [](const torch::Tensor& t) { return t; }); },
              testing::ThrowsMessage<Error>(HasSubstr("null")));
}

std::string run_python(const std::string& arguments) {
  const std::string command = std::string(TRAINLOOP_PYTHON) + " " + TRAINLOOP_SOURCE_DIR +
                              "/tests/python/scripted_model.py " + arguments;
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return output;
  std::array<char, 4096> buffer{};
  while (fgets(buffer.data(), buffer.size(), pipe) != nullptr) output += buffer.data();
  EXPECT_EQ(pclose(pipe), 0) << command;
  return output;
}

// A model scripted in Python trains from C++, and Python loads the result.
TEST(ModelTest, TorchScriptModelFromPythonTrainsAndLoadsBack) {
  ASSERT_TRUE(fs::exists(TRAINLOOP_PYTHON))
      << "no Python (" << TRAINLOOP_PYTHON << "): install python3 and python3-torch";
  const fs::path dir = fs::temp_directory_path() / ("trainloop_model_test_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string scripted = (dir / "scripted.pt").string();
  const std::string trained = (dir / "trained.pt").string();
  run_python("make " + scripted);
  torch::jit::Module module = torch::jit::load(scripted);
  Model model(module);
  ASSERT_EQ(model.parameters().size(), 4u);

  torch::manual_seed(0);
  const auto inputs = torch::randn({128, 4});
  const auto targets = (inputs.select(1, 0) > 0).to(torch::kLong) + (inputs.select(1, 1) > 0).to(torch::kLong);
  const data::TensorDataset dataset(inputs, targets);
  torch::optim::Adam optimizer(model.parameters(), torch::optim::AdamOptions(0.02));
  TrainingLoop loop(data::Epochs(dataset, 32).seed(7), nullptr, optimizer, losses::cross_entropy);
  const double before = loop.evaluate(model, data::Batches(dataset, 128)).at("loss");
  loop.fit(model, 30);
  const double after = loop.evaluate(model, data::Batches(dataset, 128)).at("loss");
  EXPECT_LT(after, before * 0.6) << "before " << before << ", after " << after;

  module.save(trained);
  const auto from_python = nlohmann::json::parse(run_python("run " + trained));
  torch::NoGradGuard no_grad;
  module.eval();
  const auto ours = model.forward(torch::linspace(-1, 1, 20).reshape({5, 4}));
  ASSERT_EQ(from_python.size(), 5u);
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_NEAR(from_python[i][j].get<double>(), ours[i][j].item<double>(), 1e-5);
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace trainloop
