#include "trainloop/training_loop.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <tuple>
#include <vector>

#include "trainloop/callbacks/csv_logger.h"
#include "trainloop/error.h"

namespace trainloop {
namespace {

using testing::ElementsAreArray;
using testing::HasSubstr;

// 6 training examples of 4 features in 3 classes; batches of 2 give 3 batches.
data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return data::TensorDataset(torch::randn({size, 4}), torch::randint(0, 3, {size}));
}

// Records (event, epoch, batch) for every event.
struct Recorder : Callback {
  std::vector<std::string> trace;
  void on_event(Event event, TrainingLoop& loop) override {
    const auto& s = loop.state();
    trace.push_back(std::string(to_string(event)) + " " + std::to_string(s.epoch) + " " +
                    std::to_string(s.batch));
  }
};

// The trace one epoch `e` of 3 batches produces for a phase.
void add_pass(std::vector<std::string>& trace, int e, bool training) {
  const std::string se = std::to_string(e);
  trace.push_back((training ? "training_start " : "validation_start ") + se + " 0");
  for (int b = 0; b < 3; ++b) {
    const std::string sb = " " + std::to_string(b);
    trace.push_back("batch_start " + se + sb);
    trace.push_back("inference_prediction_end " + se + sb);
    if (training) trace.push_back("update_start " + se + sb);
    trace.push_back("batch_end " + se + sb);
  }
  trace.push_back((training ? "training_end " : "validation_end ") + se + " 3");
}

struct LoopFixture : testing::Test {
  torch::nn::Linear model{4, 3};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1)};
  std::shared_ptr<Recorder> recorder = std::make_shared<Recorder>();
  data::TensorDataset train = make_dataset(6, 1);
  data::TensorDataset valid = make_dataset(6, 2);

  TrainingLoop make_loop(bool validation, std::vector<std::shared_ptr<Callback>> extra = {}) {
    extra.insert(extra.begin(), recorder);
    return TrainingLoop(data::Epochs(train, 2).seed(3),
                        validation ? data::DataSource(data::Batches(valid, 2)) : nullptr,
                        optimizer, losses::cross_entropy, {metrics::accuracy()}, extra);
  }
};

TEST_F(LoopFixture, EventSequenceWithValidation) {
  auto loop = make_loop(true);
  EXPECT_EQ(loop.fit(model, 2), FitStatus::completed);
  std::vector<std::string> expected{"fit_start 0 0"};
  for (int e = 0; e < 2; ++e) {
    expected.push_back("epoch_start " + std::to_string(e) + " " + (e == 0 ? "0" : "3"));
    add_pass(expected, e, true);
    add_pass(expected, e, false);
    expected.push_back("epoch_end " + std::to_string(e) + " 3");
  }
  expected.push_back("fit_end 2 3");
  EXPECT_THAT(recorder->trace, ElementsAreArray(expected));
  EXPECT_EQ(loop.state().global_step, 6);
}

TEST_F(LoopFixture, EventSequenceWithoutValidation) {
  auto loop = make_loop(false);
  loop.fit(model, 2);
  std::vector<std::string> expected{"fit_start 0 0"};
  for (int e = 0; e < 2; ++e) {
    expected.push_back("epoch_start " + std::to_string(e) + " " + (e == 0 ? "0" : "3"));
    add_pass(expected, e, true);
    expected.push_back("epoch_end " + std::to_string(e) + " 3");
  }
  expected.push_back("fit_end 2 3");
  EXPECT_THAT(recorder->trace, ElementsAreArray(expected));
}

// Throws `Cancel` at the first event matching (event, epoch, batch).
template <class CancelType>
std::shared_ptr<Callback> cancel_at(Event when, int64_t epoch, int64_t batch) {
  return callbacks::lambda([=](Event event, TrainingLoop& loop) {
    const auto& s = loop.state();
    if (event == when && s.epoch == epoch && s.batch == batch && s.phase == Phase::training) {
      throw CancelType();
    }
  });
}

TEST_F(LoopFixture, CancelBatchSkipsTheRestOfThatBatchOnly) {
  auto loop = make_loop(false, {cancel_at<CancelBatch>(Event::inference_prediction_end, 0, 1)});
  EXPECT_EQ(loop.fit(model, 1), FitStatus::completed);
  const std::vector<std::string> expected{
      "fit_start 0 0",  "epoch_start 0 0", "training_start 0 0",
      "batch_start 0 0", "inference_prediction_end 0 0", "update_start 0 0", "batch_end 0 0",
      "batch_start 0 1", "inference_prediction_end 0 1", "batch_end 0 1",
      "batch_start 0 2", "inference_prediction_end 0 2", "update_start 0 2", "batch_end 0 2",
      "training_end 0 3", "epoch_end 0 3", "fit_end 1 3"};
  EXPECT_THAT(recorder->trace, ElementsAreArray(expected));
  EXPECT_EQ(loop.state().global_step, 2);  // the cancelled batch made no update
}

TEST_F(LoopFixture, CancelEpochSkipsTheRestOfTheEpochAndValidation) {
  auto loop = make_loop(true, {cancel_at<CancelEpoch>(Event::batch_start, 0, 1)});
  EXPECT_EQ(loop.fit(model, 2), FitStatus::completed);
  std::vector<std::string> expected{
      "fit_start 0 0", "epoch_start 0 0", "training_start 0 0",
      "batch_start 0 0", "inference_prediction_end 0 0", "update_start 0 0", "batch_end 0 0",
      "batch_start 0 1", "batch_end 0 1", "training_end 0 1", "epoch_end 0 1",
      "epoch_start 1 1"};
  add_pass(expected, 1, true);
  add_pass(expected, 1, false);
  expected.push_back("epoch_end 1 3");
  expected.push_back("fit_end 2 3");
  EXPECT_THAT(recorder->trace, ElementsAreArray(expected));
  EXPECT_EQ(loop.state().global_step, 4);
}

TEST_F(LoopFixture, CancelFitEndsCleanlyAndFitEndRuns) {
  auto loop = make_loop(true, {cancel_at<CancelFit>(Event::update_start, 1, 0)});
  EXPECT_EQ(loop.fit(model, 3), FitStatus::cancelled);
  std::vector<std::string> expected{"fit_start 0 0", "epoch_start 0 0"};
  add_pass(expected, 0, true);
  add_pass(expected, 0, false);
  expected.insert(expected.end(),
                  {"epoch_end 0 3", "epoch_start 1 3", "training_start 1 0", "batch_start 1 0",
                   "inference_prediction_end 1 0", "update_start 1 0", "batch_end 1 0",
                   "training_end 1 0", "epoch_end 1 0", "fit_end 1 0"});
  EXPECT_THAT(recorder->trace, ElementsAreArray(expected));
  EXPECT_EQ(loop.state().global_step, 3);  // the cancel came before the optimizer step
}

TEST_F(LoopFixture, EveryCallbackSeesTheEventThatCancels) {
  // The canceller comes first; the recorder after it still sees epoch_end 0.
  auto canceller = cancel_at<CancelFit>(Event::epoch_end, 0, 3);
  TrainingLoop loop(data::Epochs(train, 2).seed(3), nullptr, optimizer, losses::cross_entropy, {},
                    {canceller, recorder});
  EXPECT_EQ(loop.fit(model, 3), FitStatus::cancelled);
  ASSERT_GE(recorder->trace.size(), 2u);
  EXPECT_EQ(recorder->trace[recorder->trace.size() - 2], "epoch_end 0 3");
  EXPECT_EQ(recorder->trace.back(), "fit_end 0 3");
}

TEST_F(LoopFixture, StopRequestEndsTheFitAfterTheCurrentBatch) {
  auto stop = callbacks::lambda([](Event event, TrainingLoop& loop) {
    if (event == Event::batch_start && loop.state().global_step == 4) {
      loop.state().stop_requested = true;
    }
  });
  auto loop = make_loop(false, {stop});
  EXPECT_EQ(loop.fit(model, 5), FitStatus::cancelled);
  EXPECT_EQ(loop.state().global_step, 5);  // the batch that asked still finished
  EXPECT_EQ(recorder->trace.back(), "fit_end 1 1");
}

// `stopping` tells end events of a phase cut by a fit-level stop from those
// of a finished one; `stop_requested` stays what callbacks set.
TEST_F(LoopFixture, StoppingIsSetOnlyWhileAFitLevelStopUnwinds) {
  std::vector<std::string> seen;
  auto watch = callbacks::lambda([&seen](Event event, TrainingLoop& loop) {
    const LoopState& state = loop.state();
    if (event == Event::batch_start && state.epoch == 1 && state.batch == 1) throw CancelFit();
    if (event == Event::epoch_end || event == Event::training_end) {
      seen.push_back(std::string(to_string(event)) + " " + std::to_string(state.epoch) +
                     " stopping=" + (state.stopping ? "true" : "false") +
                     " requested=" + (state.stop_requested ? "true" : "false"));
    }
  });
  auto loop = make_loop(false, {watch});
  EXPECT_EQ(loop.fit(model, 3), FitStatus::cancelled);
  EXPECT_EQ(seen, (std::vector<std::string>{
                      "training_end 0 stopping=false requested=false",
                      "epoch_end 0 stopping=false requested=false",
                      "training_end 1 stopping=true requested=false",
                      "epoch_end 1 stopping=true requested=false"}));
}

// A cancel's scope says what it ends; a bare Cancel ends the fit.
TEST(CancelTest, EachCancelNamesItsScope) {
  EXPECT_EQ(CancelBatch().scope(), CancelScope::batch);
  EXPECT_EQ(CancelEpoch().scope(), CancelScope::epoch);
  EXPECT_EQ(CancelFit().scope(), CancelScope::fit);
  EXPECT_EQ(Cancel().scope(), CancelScope::fit);
}

TEST_F(LoopFixture, CallbackErrorNamesCallbackAndEventAndFitEndStillRuns) {
  auto failing = callbacks::lambda(
      [](Event event, TrainingLoop&) {
        if (event == Event::epoch_end) throw std::runtime_error("disk full");
      },
      "flaky_logger");
  auto loop = make_loop(false, {failing});
  EXPECT_THAT([&] { loop.fit(model, 2); },
              testing::ThrowsMessage<Error>(HasSubstr("callback flaky_logger failed at epoch_end: disk full")));
  EXPECT_EQ(recorder->trace.back(), "fit_end 0 3");
}

TEST_F(LoopFixture, AFailureAtFitEndStillLetsLaterCallbacksClose) {
  auto failing = callbacks::lambda(
      [](Event event, TrainingLoop&) {
        if (event == Event::fit_end) throw std::runtime_error("flush failed");
      },
      "logger");
  TrainingLoop loop(data::Epochs(train, 2).seed(3), nullptr, optimizer, losses::cross_entropy, {},
                    {failing, recorder});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr("callback logger failed at fit_end: flush failed")));
  EXPECT_EQ(recorder->trace.back(), "fit_end 1 3");
}

TEST_F(LoopFixture, ErrorKeepsTheOriginalNested) {
  auto failing = callbacks::lambda([](Event event, TrainingLoop&) {
    if (event == Event::fit_start) throw std::out_of_range("inner");
  });
  auto loop = make_loop(false, {failing});
  try {
    loop.fit(model, 1);
    FAIL() << "fit did not throw";
  } catch (const Error& e) {
    EXPECT_THROW(std::rethrow_if_nested(e), std::out_of_range);
  }
}

TEST_F(LoopFixture, CallbacksCanReplaceInputsAndSeeGradientsAtUpdateStart) {
  bool saw_gradient = false;
  auto edit = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    auto& s = loop.state();
    if (event == Event::batch_start) s.inputs = torch::zeros_like(s.inputs);
    if (event == Event::inference_prediction_end) {
      // With zero inputs the outputs are the bias alone.
      EXPECT_TRUE(torch::allclose(s.outputs, model->bias.expand_as(s.outputs)));
    }
    if (event == Event::update_start) saw_gradient = model->bias.grad().defined();
  });
  auto loop = make_loop(false, {edit});
  loop.fit(model, 1);
  EXPECT_TRUE(saw_gradient);
  // Zero inputs leave no gradient on the weights.
  EXPECT_TRUE(torch::allclose(model->weight.grad(), torch::zeros_like(model->weight)));
}

TEST_F(LoopFixture, StateCountsAndLearningRate) {
  std::vector<std::tuple<int64_t, int64_t, Phase>> seen;
  auto probe = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    auto& s = loop.state();
    if (event == Event::batch_end) seen.emplace_back(s.batch_count, s.epoch_count, s.phase);
    if (event == Event::epoch_end) s.set_learning_rate(s.learning_rate() / 2);
  });
  auto loop = make_loop(true, {probe});
  loop.fit(model, 2);
  ASSERT_EQ(seen.size(), 12u);
  EXPECT_EQ(seen[0], std::make_tuple(int64_t{3}, int64_t{2}, Phase::training));
  EXPECT_EQ(seen[3], std::make_tuple(int64_t{3}, int64_t{2}, Phase::validation));
  EXPECT_DOUBLE_EQ(loop.state().learning_rate(), 0.025);
  EXPECT_THAT(loop.state().metric_names(),
              ElementsAreArray({"loss", "accuracy", "val_loss", "val_accuracy"}));
}

TEST_F(LoopFixture, MetricsMatchAManualPassAfterTraining) {
  auto loop = make_loop(true);
  loop.fit(model, 3);
  torch::NoGradGuard no_grad;
  const auto outputs = model->forward(valid.inputs);
  const double loss = losses::cross_entropy(outputs, valid.targets).item<double>();
  const double accuracy = outputs.argmax(1).eq(valid.targets).to(torch::kDouble).mean().item<double>();
  // Validation batches are equal-sized, so the batch-weighted mean equals the full mean.
  EXPECT_NEAR(loop.state().metric("val_loss"), loss, 1e-6);
  EXPECT_DOUBLE_EQ(loop.state().metric("val_accuracy"), accuracy);
  // The history's last epoch holds the same values, under every name.
  const std::map<std::string, double> values = loop.state().metric_values();
  ASSERT_EQ(loop.state().history.size(), 3u);
  EXPECT_EQ(loop.state().history.back(), values);
  ASSERT_EQ(values.size(), 4u);
  for (const auto& name : loop.state().metric_names()) {
    EXPECT_DOUBLE_EQ(values.at(name), loop.state().metric(name)) << name;
  }
  EXPECT_THAT([&] { loop.state().metric("val_f1"); },
              testing::ThrowsMessage<Error>(HasSubstr("known: loss, accuracy, val_loss, val_accuracy")));
}

TEST_F(LoopFixture, EvaluateAndPredict) {
  auto loop = make_loop(true);
  loop.fit(model, 2);
  const auto values = loop.evaluate(model, data::Batches(valid, 4));
  ASSERT_EQ(values.count("loss"), 1u);
  ASSERT_EQ(values.count("accuracy"), 1u);
  torch::NoGradGuard no_grad;
  const auto expected = model->forward(valid.inputs);
  EXPECT_NEAR(values.at("loss"), losses::cross_entropy(expected, valid.targets).item<double>(), 1e-6);
  const auto predicted = loop.predict(model, data::Batches(data::TensorDataset(valid.inputs, {}), 4));
  EXPECT_TRUE(torch::allclose(predicted, expected));
}

TEST_F(LoopFixture, CustomStep) {
  auto loop = make_loop(false);
  int calls = 0;
  loop.step([&](LoopState& state, const Model& m, const LossFunction& loss) {
    ++calls;
    state.outputs = m(state.inputs * 2);
    state.loss = loss(state.outputs, state.targets) + 0.0 * state.outputs.sum();
  });
  loop.fit(model, 1);
  EXPECT_EQ(calls, 3);
}

TEST_F(LoopFixture, ConstructorRejectsBadArguments) {
  EXPECT_THAT([&] { TrainingLoop(nullptr, nullptr, optimizer, losses::mse); },
              testing::ThrowsMessage<Error>(HasSubstr("no training data")));
  EXPECT_THAT([&] {
    TrainingLoop(data::Epochs(train, 2), nullptr, optimizer, losses::mse,
                 {metrics::accuracy(), metrics::accuracy()});
  }, testing::ThrowsMessage<Error>(HasSubstr("two metrics are named \"accuracy\"")));
  auto loop = make_loop(false);
  EXPECT_THAT([&] { loop.fit(model, -1); }, testing::ThrowsMessage<Error>(HasSubstr("expected >= 0")));
}

// --- the user's mistakes name themselves -------------------------------------

TEST_F(LoopFixture, AFailingForwardNamesPhasePositionShapesAndLibTorchsFirstLine) {
  torch::nn::Linear wrong(5, 3);  // the data has 4 features
  torch::optim::SGD wrong_optimizer(wrong->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop(data::Epochs(train, 2).seed(3), nullptr, wrong_optimizer,
                    losses::cross_entropy);
  try {
    loop.fit(wrong, 1);
    FAIL() << "fit passed";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_THAT(message, HasSubstr("training, epoch 1/1, batch 1/3 (inputs Float [2, 4], targets "
                                   "Long [2]): the step failed: mat1 and mat2 shapes cannot be "
                                   "multiplied (2x4 and 5x3)"));
    // One line: no C++ stack trace.
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST_F(LoopFixture, ClassTargetsBeyondTheOutputsFailOnTheFirstBatchNamingTheWidth) {
  const data::TensorDataset five_classes(train.inputs, torch::tensor({0, 1, 4, 2, 0, 1}));
  TrainingLoop loop(data::Batches(five_classes, 3), nullptr, optimizer, losses::cross_entropy);
  EXPECT_THAT([&] { loop.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr(
                  "training, epoch 1/1, batch 1/2 (inputs Float [3, 4], targets Long [3]): the "
                  "step failed: class targets reach 4, but the model's outputs (Float [3, 3]) give "
                  "3 classes: expected targets 0 to 2")));
  const data::TensorDataset negative(train.inputs, torch::tensor({0, 1, 2, 2, -1, 1}));
  TrainingLoop later(data::Batches(negative, 3), nullptr, optimizer, losses::cross_entropy);
  // Past the first batch LibTorch's own check speaks, with the same context.
  EXPECT_THAT([&] { later.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr("training, epoch 1/1, batch 2/2")));
}

TEST_F(LoopFixture, AFailingMetricAndAFailingBackwardAreNamed) {
  struct Broken : Metric {
    std::string name() const override { return "broken"; }
    void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {
      throw std::runtime_error("cannot count this\nsecond line");
    }
    double compute() const override { return 0; }
    void reset() override {}
    std::shared_ptr<Metric> clone() const override { return std::make_shared<Broken>(); }
  };
  TrainingLoop loop(data::Epochs(train, 2).seed(3), nullptr, optimizer, losses::cross_entropy,
                    {std::make_shared<Broken>()});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr("batch 1/3 (inputs Float [2, 4], targets "
                                                      "Long [2]): metric \"broken\" failed: "
                                                      "cannot count this")));
  auto no_graph = make_loop(false);
  no_graph.step([](LoopState& state, const Model& m, const LossFunction& loss) {
    state.outputs = m(state.inputs).detach();
    state.loss = loss(state.outputs, state.targets);
  });
  EXPECT_THAT([&] { no_graph.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr("batch 1/3 (inputs Float [2, 4], targets "
                                                      "Long [2]): backward failed: element 0 of "
                                                      "tensors does not require grad")));
}

TEST_F(LoopFixture, AnOptimizerOverAnotherModelsParametersFailsBeforeFitStart) {
  torch::nn::Linear other(4, 3);
  torch::optim::SGD other_optimizer(other->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop(data::Epochs(train, 2), nullptr, other_optimizer, losses::cross_entropy, {},
                    {recorder});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr(
                  "none of the optimizer's 2 parameters is a parameter of the model (2 "
                  "parameters)")));
  EXPECT_TRUE(recorder->trace.empty());
}

TEST_F(LoopFixture, EvaluateAndValidationWithoutTargetsAreErrors) {
  auto loop = make_loop(false);
  const data::TensorDataset inputs_only(valid.inputs, {});
  EXPECT_THAT([&] { loop.evaluate(model, data::Batches(inputs_only, 4)); },
              testing::ThrowsMessage<Error>(HasSubstr(
                  "evaluation, batch 1/2: the step left no loss (targets: none); evaluation needs "
                  "targets and a loss (predict gives the outputs of inputs alone)")));
  TrainingLoop validating(data::Epochs(train, 2), data::Batches(inputs_only, 4), optimizer,
                          losses::cross_entropy);
  EXPECT_THAT([&] { validating.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr("validation, epoch 1/1, batch 1/2: the step "
                                                      "left no loss")));
}

TEST_F(LoopFixture, PredictRefusesShuffledDataAndKeepsTheDataOrder) {
  auto loop = make_loop(false);
  EXPECT_THAT([&] { loop.predict(model, data::Epochs(valid, 2)); },
              testing::ThrowsMessage<Error>(HasSubstr("the data shuffles its examples")));
  const auto predicted = loop.predict(model, data::Epochs(valid, 4).shuffle(false));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(predicted, model->forward(valid.inputs)));
}

TEST_F(LoopFixture, FitEvaluateAndPredictLeaveTheModelInTheModeTheyFoundIt) {
  auto loop = make_loop(true);
  for (const bool training : {false, true}) {
    model->train(training);
    loop.fit(model, 1);
    EXPECT_EQ(model->is_training(), training);
    loop.evaluate(model, data::Batches(valid, 4));
    EXPECT_EQ(model->is_training(), training);
    loop.predict(model, data::Batches(valid, 4));
    EXPECT_EQ(model->is_training(), training);
  }
  // Also when the fit fails.
  model->train(false);
  auto failing = make_loop(false, {callbacks::lambda([](Event event, TrainingLoop&) {
    if (event == Event::batch_end) throw std::runtime_error("stop");
  })});
  EXPECT_THROW(failing.fit(model, 1), Error);
  EXPECT_FALSE(model->is_training());
}

TEST_F(LoopFixture, TwoCallbacksWritingOneFileFailAtFitStart) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("trainloop_two_writers_" + std::to_string(::getpid())) / "log.csv")
                               .string();
  auto loop = make_loop(false, {callbacks::csv_logger(path), callbacks::csv_logger(path)});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              testing::ThrowsMessage<Error>(HasSubstr("callbacks csv_logger:" + path +
                                                      " and csv_logger:" + path + " both write " +
                                                      path)));
  std::filesystem::remove_all(std::filesystem::path(path).parent_path());
}

// Every torch::optim optimizer drives the loss down on a learnable problem.
template <class Optimizer, class Options>
double loss_drop(Options options) {
  torch::manual_seed(0);
  const auto inputs = torch::randn({64, 4});
  const auto targets = (inputs.select(1, 0) > 0).to(torch::kLong);
  torch::nn::Linear model(4, 2);
  Optimizer optimizer(model->parameters(), options);
  TrainingLoop loop(data::Epochs(data::TensorDataset(inputs, targets), 16).seed(1), nullptr,
                    optimizer, losses::cross_entropy);
  const double before = loop.evaluate(model, data::Batches(data::TensorDataset(inputs, targets), 64))
                            .at("loss");
  loop.fit(model, 20);
  return before - loop.evaluate(model, data::Batches(data::TensorDataset(inputs, targets), 64))
                      .at("loss");
}

TEST(OptimizersTest, EveryTorchOptimizerTrains) {
  EXPECT_GT((loss_drop<torch::optim::SGD>(torch::optim::SGDOptions(0.1).momentum(0.9))), 0.2);
  EXPECT_GT((loss_drop<torch::optim::Adam>(torch::optim::AdamOptions(0.05))), 0.2);
  EXPECT_GT((loss_drop<torch::optim::AdamW>(torch::optim::AdamWOptions(0.05))), 0.2);
  EXPECT_GT((loss_drop<torch::optim::RMSprop>(torch::optim::RMSpropOptions(0.01))), 0.2);
  EXPECT_GT((loss_drop<torch::optim::Adagrad>(torch::optim::AdagradOptions(0.5))), 0.2);
}

// 4 accumulated batches of 8 make the same update as one batch of 32.
TEST(AccumulationTest, FourBatchesOfEightEqualOneBatchOfThirtyTwo) {
  torch::manual_seed(0);
  const data::TensorDataset dataset(torch::randn({32, 4}), torch::randint(0, 3, {32}));
  auto train = [&](int64_t batch_size, int64_t accumulation) {
    torch::manual_seed(1);
    torch::nn::Linear model(4, 3);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
    int64_t updates = 0;
    TrainingLoop loop(data::Batches(dataset, batch_size), nullptr, optimizer, losses::cross_entropy, {},
                      {callbacks::lambda([&](Event event, TrainingLoop&) {
                        if (event == Event::update_start) ++updates;
                      })});
    loop.accumulate_gradients(accumulation);
    loop.fit(model, 3);
    EXPECT_EQ(loop.state().global_step, 3);
    EXPECT_EQ(updates, 3);
    return std::make_pair(model->weight.detach().clone(), model->bias.detach().clone());
  };
  const auto [big_weight, big_bias] = train(32, 1);
  const auto [accumulated_weight, accumulated_bias] = train(8, 4);
  EXPECT_TRUE(torch::allclose(big_weight, accumulated_weight, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(big_bias, accumulated_bias, 1e-6, 1e-6));
  // Without accumulation the same batches make 12 different updates.
  const auto [plain_weight, plain_bias] = [&] {
    torch::manual_seed(1);
    torch::nn::Linear model(4, 3);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5).momentum(0.9));
    TrainingLoop loop(data::Batches(dataset, 8), nullptr, optimizer, losses::cross_entropy);
    loop.fit(model, 3);
    return std::make_pair(model->weight.detach().clone(), model->bias.detach().clone());
  }();
  EXPECT_FALSE(torch::allclose(big_weight, plain_weight, 1e-4, 1e-4));
  torch::nn::Linear model(4, 3);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop(data::Batches(dataset, 8), nullptr, optimizer, losses::cross_entropy);
  EXPECT_THAT([&] { loop.accumulate_gradients(0); },
              testing::ThrowsMessage<Error>(HasSubstr("0 batches, expected >= 1")));
}

// Not built under the sanitizers: AddressSanitizer's quarantine grows
// resident memory by design, so the measure would mean nothing there (and a
// test that is not registered is not a skipped one).
#ifndef TRAINLOOP_SANITIZED

// Resident memory in KiB, from /proc/self/status ("VmRSS:  12345 kB").
int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

TEST(MemoryTest, ResidentMemoryStaysFlatAcrossEpochs) {
  torch::manual_seed(1);
  torch::nn::Sequential model(torch::nn::Linear(16, 64), torch::nn::ReLU(), torch::nn::Linear(64, 4));
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  const data::TensorDataset train(torch::randn({2048, 16}), torch::randint(0, 4, {2048}));
  const data::TensorDataset valid(torch::randn({512, 16}), torch::randint(0, 4, {512}));
  std::vector<int64_t> resident;
  auto probe = callbacks::lambda(
      [&](Event event, TrainingLoop&) {
        if (event == Event::epoch_end) resident.push_back(resident_kib());
      },
      "probe");
  TrainingLoop loop(data::Epochs(train, 32).seed(1), data::Batches(valid, 128), optimizer,
                    losses::cross_entropy, {metrics::accuracy(), metrics::matthews_correlation()},
                    {probe});
  loop.fit(model, 10);
  ASSERT_EQ(resident.size(), 10u);
  std::printf("resident memory after epoch 1: %lld KiB, after epoch 10: %lld KiB\n",
              static_cast<long long>(resident[0]), static_cast<long long>(resident[9]));
  // 64 batches an epoch: keeping one batch's inputs and outputs alive each
  // batch (~3 KiB) would add about 1.7 MiB over nine epochs; the allocator's
  // own noise stays within a few hundred KiB.
  EXPECT_LT(resident[9] - resident[0], 1024) << "resident memory grew by "
                                             << resident[9] - resident[0] << " KiB";
}
#endif  // TRAINLOOP_SANITIZED

TEST(EventTest, NamesMatchTheEnumerators) {
  EXPECT_STREQ(to_string(Event::inference_prediction_end), "inference_prediction_end");
  EXPECT_STREQ(to_string(Event::fit_start), "fit_start");
  EXPECT_STREQ(to_string(Phase::validation), "validation");
}

}  // namespace
}  // namespace trainloop
