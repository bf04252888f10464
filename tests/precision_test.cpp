#include "trainloop/precision.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <tuple>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "trainloop/callbacks/checkpoint.h"
#include "trainloop/callbacks/terminate_on_nan.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"
#include "trainloop/weights.h"

namespace trainloop {
namespace {

using ::testing::HasSubstr;
using ::testing::ThrowsMessage;
using testing_support::TempDir;

TEST(PrecisionTest, ParsesTheNamesTheExamplesTake) {
  EXPECT_EQ(parse_precision("fp32"), torch::kFloat);
  EXPECT_EQ(parse_precision("bf16"), torch::kBFloat16);
  EXPECT_EQ(parse_precision("BFloat16"), torch::kBFloat16);
  EXPECT_EQ(parse_precision("fp16"), torch::kHalf);
  EXPECT_EQ(precision_name(torch::kHalf), "fp16");
  EXPECT_THAT([] { parse_precision("fp8"); },
              ThrowsMessage<Error>(HasSubstr("precision \"fp8\": expected fp32, bf16 or fp16")));
  EXPECT_THAT([] { (void)MixedPrecisionOptions(torch::kDouble); },
              ThrowsMessage<Error>(HasSubstr("dtype Double")));
}

TEST(PrecisionTest, LossScalingIsOnForFloat16Only) {
  EXPECT_TRUE(MixedPrecisionOptions(torch::kHalf).scales_loss());
  EXPECT_FALSE(MixedPrecisionOptions(torch::kBFloat16).scales_loss());
  EXPECT_FALSE(MixedPrecisionOptions(torch::kFloat).scales_loss());
  EXPECT_TRUE(MixedPrecisionOptions(torch::kBFloat16).loss_scaling(LossScalerOptions()).scales_loss());
}

TEST(AutocastGuardTest, CastsInsideNestsAndRestores) {
  const torch::Tensor a = torch::randn({4, 4});
  EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kFloat);
  {
    const AutocastGuard outer(torch::kCPU, torch::kBFloat16);
    EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kBFloat16);
    {
      // A user's step that turns autocast off inside the loop's.
      const AutocastGuard inner(torch::kCPU, torch::kFloat);
      EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kFloat);
    }
    EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kBFloat16);
  }
  EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kFloat);
}

TEST(AutocastGuardTest, Float16OnTheCpuWhereThisLibTorchHasIt) {
  const torch::Tensor a = torch::randn({4, 4});
  if (autocast_supported(torch::kCPU, torch::kHalf)) {
    const AutocastGuard guard(torch::kCPU, torch::kHalf);
    EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kHalf);
  } else {
    EXPECT_THAT([] { AutocastGuard(torch::kCPU, torch::kHalf); },
                ThrowsMessage<Error>(HasSubstr("float16 on the CPU needs LibTorch 2.4 or newer")));
  }
}

// --- The loop against Python's torch.autocast (+ GradScaler) -------------

constexpr int64_t kSteps = 16;
constexpr int64_t kBatch = 12;

torch::nn::Sequential make_mlp() {
  torch::manual_seed(0);
  return torch::nn::Sequential(torch::nn::Linear(8, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4));
}

struct Task {
  torch::Tensor inputs;   // [steps, batch, 8]
  torch::Tensor targets;  // [steps, batch]
};

// Two batches of huge inputs make scaled gradients overflow even in
// bfloat16's range, so the scaler must skip them.
Task make_task(bool huge_batches) {
  torch::manual_seed(1);
  Task task{torch::randn({kSteps, kBatch, 8}), torch::randint(0, 4, {kSteps, kBatch})};
  if (huge_batches) task.inputs.narrow(0, 5, 2).mul_(1e6);
  return task;
}

struct LoopRun {
  std::vector<double> scales;
  std::vector<int64_t> skipped;
  std::map<std::string, torch::Tensor> parameters;
  int64_t global_step = 0;
};

LoopRun train_with_loop(const Task& task, const MixedPrecisionOptions& precision) {
  torch::set_num_threads(1);
  auto model = make_mlp();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const data::TensorDataset dataset(task.inputs.reshape({-1, 8}), task.targets.reshape({-1}));
  TrainingLoop loop(data::Batches(dataset, kBatch), nullptr, optimizer, losses::cross_entropy);
  loop.mixed_precision(precision).handle_signals(false);
  LoopRun run;
  loop.add_callback(callbacks::lambda([&run](Event event, TrainingLoop& l) {
    if (event != Event::update_start) return;
    run.scales.push_back(l.loss_scaler() ? l.loss_scaler()->scale_value() : 1.0);
    run.skipped.push_back(l.state().update_skipped ? 1 : 0);
  }));
  loop.fit(model, 1);
  run.global_step = loop.state().global_step;
  for (const auto& item : model->named_parameters()) run.parameters[item.key()] = item.value().detach();
  return run;
}

LoopRun train_with_python(const Task& task, const std::string& arguments, double* reference) {
  const TempDir scratch;
  auto model = make_mlp();
  std::vector<std::pair<std::string, torch::Tensor>> input;
  for (const auto& item : model->named_parameters()) input.emplace_back(item.key(), item.value());
  input.emplace_back("inputs", task.inputs);
  input.emplace_back("targets", task.targets);
  const auto in = scratch.path / "in.pt";
  const auto out = scratch.path / "out.pt";
  save_tensors(input, in.string());
  const auto result = testing_support::run_command(
      fmt::format("'{}' '{}/tests/python/amp_reference.py' '{}' '{}' {} 2>&1", TRAINLOOP_PYTHON,
                  TRAINLOOP_SOURCE_DIR, in.string(), out.string(), arguments));
  EXPECT_EQ(result.status, 0) << result.output;
  LoopRun run;
  if (result.status != 0) return run;
  for (const auto& [name, tensor] : load_tensors(out.string())) {
    if (name == "scales") {
      for (int64_t i = 0; i < tensor.numel(); ++i) run.scales.push_back(tensor[i].item<double>());
    } else if (name == "skipped") {
      for (int64_t i = 0; i < tensor.numel(); ++i) run.skipped.push_back(tensor[i].item<int64_t>());
    } else if (name == "reference") {
      *reference = tensor.item<double>();
    } else {
      run.parameters[name] = tensor;
    }
  }
  return run;
}

// Same kernels in the same order: the weights agree to float32 rounding.
// The tolerance allows a few ulps per step over 16 steps.
void expect_same_training(const LoopRun& ours, const LoopRun& python) {
  EXPECT_EQ(ours.scales, python.scales);
  EXPECT_EQ(ours.skipped, python.skipped);
  ASSERT_EQ(ours.parameters.size(), python.parameters.size());
  double largest = 0;
  for (const auto& [name, tensor] : python.parameters) {
    ASSERT_EQ(ours.parameters.count(name), 1u) << name;
    const double difference = (ours.parameters.at(name) - tensor).abs().max().item<double>();
    EXPECT_LE(difference, 1e-5) << name;
    largest = std::max(largest, difference);
  }
  std::cout << "largest difference from Python's weights: " << largest << "\n";
  int64_t skips = 0;
  for (const int64_t s : ours.skipped) skips += s;
  EXPECT_EQ(ours.global_step, kSteps - skips) << "a skipped update counts no step";
}

TEST(MixedPrecisionLoopTest, Bfloat16EqualsPythonAutocast) {
  const Task task = make_task(false);
  double reference = -1;
  const LoopRun python = train_with_python(task, "--dtype bf16", &reference);
  const LoopRun ours = train_with_loop(task, MixedPrecisionOptions(torch::kBFloat16));
  expect_same_training(ours, python);
  // And bfloat16 really ran: float32 training ends elsewhere.
  const LoopRun full = train_with_loop(task, MixedPrecisionOptions(torch::kFloat));
  EXPECT_GT((full.parameters.at("0.weight") - ours.parameters.at("0.weight")).abs().max().item<double>(),
            1e-4);
}

TEST(MixedPrecisionLoopTest, ScaledBfloat16WithOverflowsEqualsPythonGradScaler) {
  const Task task = make_task(true);
  const double scale = std::ldexp(1.0, 120);
  double reference = -1;
  const LoopRun python = train_with_python(
      task, fmt::format("--dtype bf16 --scaling --init-scale {} --growth-interval 3", scale),
      &reference);
  const LoopRun ours = train_with_loop(
      task, MixedPrecisionOptions(torch::kBFloat16)
                .loss_scaling(LossScalerOptions().init_scale(scale).growth_interval(3)));
  expect_same_training(ours, python);
  // The two huge batches overflowed and were skipped; the scale grew between.
  EXPECT_EQ(ours.skipped, (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  std::cout << "reference: " << (reference == 1 ? "torch.amp.GradScaler" : "GradScaler's rule "
                                                   "(this torch has no GradScaler for the CPU)")
            << "\n";
}

TEST(MixedPrecisionLoopTest, Float16WithOverflowsEqualsPythonGradScaler) {
  const Task task = make_task(false);
  const MixedPrecisionOptions fp16 =
      MixedPrecisionOptions(torch::kHalf).loss_scaling(
          LossScalerOptions().init_scale(std::ldexp(1.0, 24)).growth_interval(4));
  if (!autocast_supported(torch::kCPU, torch::kHalf)) {
    // This LibTorch cannot: the fit says so before training.
    EXPECT_THAT([&] { train_with_loop(task, fp16); },
                ThrowsMessage<Error>(HasSubstr("float16 on the CPU needs LibTorch 2.4")));
    return;
  }
  double reference = -1;
  const LoopRun python = train_with_python(
      task, fmt::format("--dtype fp16 --scaling --init-scale {} --growth-interval 4",
                        std::ldexp(1.0, 24)),
      &reference);
  const LoopRun ours = train_with_loop(task, fp16);
  expect_same_training(ours, python);
  EXPECT_EQ(reference, 1) << "torch.amp.GradScaler is the reference wherever fp16 runs on the CPU";
  int64_t skips = 0;
  for (const int64_t s : ours.skipped) skips += s;
  EXPECT_GE(skips, 3) << "2^24 overflows float16 gradients until it has backed off";
}

// --- The rest of the loop under mixed precision --------------------------

TEST(MixedPrecisionLoopTest, EvaluateAndPredictRunUnderTheSameAutocast) {
  auto model = make_mlp();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  const Task task = make_task(false);
  const data::TensorDataset dataset(task.inputs.reshape({-1, 8}), task.targets.reshape({-1}));
  TrainingLoop loop(data::Batches(dataset, kBatch), data::Batches(dataset, kBatch), optimizer,
                    losses::cross_entropy, {metrics::accuracy()});
  loop.mixed_precision(torch::kBFloat16).handle_signals(false);
  std::map<Phase, std::set<torch::Dtype>> output_types;
  loop.add_callback(callbacks::lambda([&](Event event, TrainingLoop& l) {
    if (event == Event::inference_prediction_end) {
      output_types[l.state().phase].insert(l.state().outputs.scalar_type());
    }
  }));
  loop.fit(model, 1);
  const auto metrics = loop.evaluate(model, data::Batches(dataset, kBatch));
  const torch::Tensor predictions =
      loop.predict(model, data::Batches(data::TensorDataset(dataset.inputs, {}), kBatch));
  for (const Phase phase : {Phase::training, Phase::validation, Phase::evaluation, Phase::prediction}) {
    EXPECT_EQ(output_types[phase], std::set<torch::Dtype>{torch::kBFloat16}) << to_string(phase);
  }
  EXPECT_EQ(predictions.scalar_type(), torch::kFloat);
  EXPECT_EQ(predictions.size(0), kSteps * kBatch);
  // The metrics computed from bfloat16 outputs, in float32: the loss equals
  // that of the predictions (evaluated by hand, under the same autocast).
  torch::Tensor by_hand;
  {
    const AutocastGuard autocast(torch::kCPU, torch::kBFloat16);
    torch::NoGradGuard no_grad;
    by_hand = torch::nn::functional::cross_entropy(model->forward(dataset.inputs), dataset.targets);
  }
  EXPECT_NEAR(metrics.at("loss"), by_hand.item<double>(), 1e-3);
  EXPECT_TRUE(torch::allclose(predictions, model->forward(dataset.inputs).detach(), 0.05, 0.05));
}

// A step with its own autocast region (here: the loss in float32) nests
// inside the loop's, and autocast is off again after the fit.
TEST(MixedPrecisionLoopTest, AStepsOwnAutocastNestsInsideTheLoops) {
  auto model = make_mlp();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  const Task task = make_task(false);
  const data::TensorDataset dataset(task.inputs.reshape({-1, 8}), task.targets.reshape({-1}));
  TrainingLoop loop(data::Batches(dataset, kBatch), nullptr, optimizer, losses::cross_entropy);
  loop.mixed_precision(torch::kBFloat16).handle_signals(false);
  std::set<std::string> seen;
  loop.step([&seen](LoopState& state, const Model& net, const LossFunction& loss) {
    state.outputs = net.forward(state.inputs);
    const torch::Tensor a = torch::ones({2, 2});
    seen.insert(std::string("outer mm ") + c10::toString(torch::mm(a, a).scalar_type()));
    {
      const AutocastGuard full(torch::kCPU, torch::kFloat);
      seen.insert(std::string("inner mm ") + c10::toString(torch::mm(a, a).scalar_type()));
      state.loss = loss(state.outputs.to(torch::kFloat), state.targets);
    }
    seen.insert(std::string("after mm ") + c10::toString(torch::mm(a, a).scalar_type()));
  });
  loop.fit(model, 1);
  EXPECT_EQ(seen, (std::set<std::string>{"outer mm BFloat16", "inner mm Float", "after mm BFloat16"}));
  const torch::Tensor a = torch::ones({2, 2});
  EXPECT_EQ(torch::mm(a, a).scalar_type(), torch::kFloat);
}

TEST(MixedPrecisionLoopTest, SkippedUpdatesDoNotTripTheNanGuard) {
  const Task task = make_task(true);
  auto model = make_mlp();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  const data::TensorDataset dataset(task.inputs.reshape({-1, 8}), task.targets.reshape({-1}));
  TrainingLoop loop(data::Batches(dataset, kBatch), nullptr, optimizer, losses::cross_entropy, {},
                    {callbacks::terminate_on_nan(callbacks::TerminateOnNanOptions().check_gradients(true))});
  loop.mixed_precision(MixedPrecisionOptions(torch::kBFloat16)
                           .loss_scaling(LossScalerOptions().init_scale(std::ldexp(1.0, 120))))
      .handle_signals(false);
  EXPECT_EQ(loop.fit(model, 1), FitStatus::completed);
  EXPECT_EQ(loop.state().global_step, kSteps - 2);
  EXPECT_EQ(loop.loss_scaler()->scale_value(), std::ldexp(1.0, 118));
}

TEST(MixedPrecisionLoopTest, UnsupportedPrecisionFailsBeforeTraining) {
  auto model = make_mlp();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  const Task task = make_task(false);
  const data::TensorDataset dataset(task.inputs.reshape({-1, 8}), task.targets.reshape({-1}));
  TrainingLoop loop(data::Batches(dataset, kBatch), nullptr, optimizer, losses::cross_entropy);
  bool started = false;
  loop.add_callback(callbacks::lambda([&](Event event, TrainingLoop&) {
    if (event == Event::fit_start) started = true;
  }));
  loop.mixed_precision(MixedPrecisionOptions(torch::kBFloat16)).handle_signals(false);
  EXPECT_THAT([&] { loop.fit(model, 1, torch::Device(torch::kMeta)); },
              ThrowsMessage<Error>(HasSubstr("is not supported by this LibTorch")));
  EXPECT_FALSE(started);
}

// A checkpoint holds the loss scale: a fit resumed from one ends exactly as
// one that never stopped, skipped updates and scale included.
TEST(MixedPrecisionLoopTest, ResumeContinuesTheScaleExactly) {
  const TempDir scratch;
  const Task task = make_task(true);
  const data::TensorDataset dataset(task.inputs.reshape({-1, 8}), task.targets.reshape({-1}));
  const MixedPrecisionOptions precision =
      MixedPrecisionOptions(torch::kBFloat16)
          .loss_scaling(LossScalerOptions().init_scale(std::ldexp(1.0, 120)).growth_interval(3));
  // stop_at > 0: checkpoints every 5 updates, and the fit stops at that step.
  auto run = [&](const std::string& resume, int64_t stop_at) {
    auto model = make_mlp();
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    TrainingLoop loop(data::Epochs(dataset, kBatch).seed(3), nullptr, optimizer,
                      losses::cross_entropy);
    loop.mixed_precision(precision).handle_signals(false);
    if (stop_at > 0) {
      loop.add_callback(callbacks::checkpoint(
          callbacks::CheckpointOptions((scratch.path / "ckpt").string()).every_n_steps(5)));
      loop.add_callback(callbacks::lambda([stop_at](Event event, TrainingLoop& l) {
        if (event == Event::batch_end && l.state().global_step == stop_at) {
          l.state().stop_requested = true;
        }
      }));
    }
    const FitStatus status = loop.fit(model, 3, torch::kCPU, resume);
    EXPECT_EQ(status, stop_at > 0 ? FitStatus::cancelled : FitStatus::completed);
    EXPECT_EQ(loop.state().resumed_from.empty(), resume.empty());
    return std::make_tuple(model->named_parameters()["2.weight"].detach().clone(),
                           loop.loss_scaler()->scale_value(),
                           loop.loss_scaler()->growth_tracker(), loop.state().global_step);
  };
  const auto whole = run("", 0);
  // 19 updates in all (the huge examples make many skips); this run stops
  // at the 12th, its newest checkpoint is of the 10th.
  const auto stopped = run("", 12);
  EXPECT_EQ(std::get<3>(stopped), 12);
  EXPECT_EQ(std::get<3>(whole), 19);
  const auto resumed = run((scratch.path / "ckpt").string(), 0);
  EXPECT_TRUE(torch::equal(std::get<0>(whole), std::get<0>(resumed)));
  EXPECT_EQ(std::get<1>(whole), std::get<1>(resumed));
  EXPECT_EQ(std::get<2>(whole), std::get<2>(resumed));
  EXPECT_EQ(std::get<3>(whole), std::get<3>(resumed));
  EXPECT_NE(std::get<1>(whole), std::ldexp(1.0, 120)) << "the scale moved during the fit";
}

}  // namespace
}  // namespace trainloop
