#include "trainloop/callbacks/early_stopping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using callbacks::EarlyStoppingOptions;
using callbacks::Mode;
using testing::HasSubstr;
using testing::ThrowsMessage;

// A metric named "score" whose value in epoch e is values[e]: it counts its
// resets, which the loop does once per training pass.
class SequenceMetric : public Metric {
 public:
  explicit SequenceMetric(std::vector<double> values) : values_(std::move(values)) {}
  std::string name() const override { return "score"; }
  void reset() override { ++epoch_; }
  void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {}
  double compute() const override {
    if (epoch_ < 1 || epoch_ > static_cast<int64_t>(values_.size())) {
      return std::numeric_limits<double>::quiet_NaN();
    }
    return values_[static_cast<size_t>(epoch_ - 1)];
  }
  std::shared_ptr<Metric> clone() const override {
    return std::make_shared<SequenceMetric>(values_);
  }

 private:
  std::vector<double> values_;
  int64_t epoch_ = 0;
};

// Keras's EarlyStopping rule written out: the number of epochs that run.
int64_t keras_epochs_run(const std::vector<double>& values, Mode mode, int64_t patience,
                         double min_delta) {
  double best = mode == Mode::min ? std::numeric_limits<double>::infinity()
                                  : -std::numeric_limits<double>::infinity();
  // Keras flips the sign of min_delta in min mode and compares value - delta.
  const double delta = mode == Mode::min ? -min_delta : min_delta;
  int64_t wait = 0;
  for (size_t epoch = 0; epoch < values.size(); ++epoch) {
    const double value = values[epoch];
    const bool improved = mode == Mode::min ? value - delta < best : value - delta > best;
    wait += 1;
    if (improved) {
      best = value;
      wait = 0;
    } else if (wait >= patience && epoch > 0) {
      return static_cast<int64_t>(epoch) + 1;
    }
  }
  return static_cast<int64_t>(values.size());
}

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(3, 4));
    bn = register_module("bn", torch::nn::BatchNorm1d(4));
    fc2 = register_module("fc2", torch::nn::Linear(4, 1));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(bn(fc1(x)).relu()); }
  torch::nn::Linear fc1{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  torch::nn::Linear fc2{nullptr};
};
TORCH_MODULE(Net);

// Callbacks that record epoch_end come before early stopping in these tests:
// its CancelFit ends the event, so later callbacks miss that last epoch_end.
struct EarlyStoppingTest : testing::Test {
  EarlyStoppingTest() { torch::manual_seed(5); }
  Net model;
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.05)};
  data::TensorDataset train{torch::randn({16, 3}), torch::randn({16, 1})};

  TrainingLoop make_loop(std::vector<double> values,
                         std::vector<std::shared_ptr<Callback>> callbacks) {
    return TrainingLoop(data::Epochs(train, 4).seed(1), nullptr, optimizer, losses::mse,
                        {std::make_shared<SequenceMetric>(std::move(values))},
                        std::move(callbacks));
  }

  std::shared_ptr<Callback> count_epochs(int64_t& epochs) {
    return callbacks::lambda([&epochs](Event event, TrainingLoop&) {
      if (event == Event::epoch_end) ++epochs;
    });
  }
};

std::vector<torch::Tensor> weights_of(const Model& model) {
  std::vector<torch::Tensor> weights;
  for (const auto& [name, tensor] : model.named_parameters()) weights.push_back(tensor.clone());
  for (const auto& [name, tensor] : model.named_buffers()) weights.push_back(tensor.clone());
  return weights;
}

void expect_equal(const std::vector<torch::Tensor>& actual,
                  const std::vector<torch::Tensor>& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    EXPECT_TRUE(torch::equal(actual[i], expected[i])) << "weight " << i;
  }
}

TEST_F(EarlyStoppingTest, StopsAtKerasEpoch) {
  struct Case {
    std::vector<double> values;
    Mode mode;
    int64_t patience;
    double min_delta;
    int64_t expected;  // epochs run, worked out by hand
  };
  const std::vector<Case> cases = {
      {{1.0, 0.9, 0.95, 0.9, 0.85, 0.86, 0.87, 0.88, 0.80, 0.7}, Mode::min, 3, 0.0, 8},
      {{1.0, 0.9, 0.95, 0.9, 0.85, 0.86, 0.87, 0.88, 0.80, 0.7}, Mode::min, 4, 0.0, 10},
      // min_delta 0.06: 0.85 is not 0.06 below 0.9, so the best stays 0.9 from epoch 2.
      {{1.0, 0.9, 0.95, 0.9, 0.85, 0.86, 0.87, 0.88, 0.80, 0.7}, Mode::min, 3, 0.06, 5},
      {{0.5, 0.6, 0.6, 0.7, 0.65, 0.69, 0.7, 0.71}, Mode::max, 2, 0.0, 6},
      {{0.5, 0.6, 0.6, 0.7, 0.65, 0.69, 0.7, 0.71}, Mode::max, 0, 0.0, 3},
      {{0.5, 0.5, 0.5}, Mode::max, 1, 0.0, 2},
  };
  for (const auto& c : cases) {
    ASSERT_EQ(keras_epochs_run(c.values, c.mode, c.patience, c.min_delta), c.expected);
    int64_t epochs = 0;
    auto loop = make_loop(c.values, {count_epochs(epochs),
                                     callbacks::early_stopping(EarlyStoppingOptions("score")
                                                                   .mode(c.mode)
                                                                   .patience(c.patience)
                                                                   .min_delta(c.min_delta))});
    const FitStatus status = loop.fit(model, static_cast<int64_t>(c.values.size()));
    EXPECT_EQ(epochs, c.expected);
    EXPECT_EQ(status, c.expected < static_cast<int64_t>(c.values.size()) ? FitStatus::cancelled
                                                                          : FitStatus::completed);
  }
}

TEST_F(EarlyStoppingTest, RestoresBestEpochWhenStoppedEarly) {
  std::vector<std::vector<torch::Tensor>> at_epoch_end;
  auto capture = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event == Event::epoch_end) at_epoch_end.push_back(weights_of(loop.model()));
  });
  // Best at the third epoch, then two worse ones stop the fit.
  auto loop = make_loop({3, 2, 1, 1.5, 1.2, 0.1},
                        {capture, callbacks::early_stopping(
                                      EarlyStoppingOptions("score").patience(2).restore_best(true))});
  EXPECT_EQ(loop.fit(model, 6), FitStatus::cancelled);
  ASSERT_EQ(at_epoch_end.size(), 5u);
  // The weights did change after the best epoch, and were put back.
  EXPECT_FALSE(torch::equal(at_epoch_end[2][0], at_epoch_end[4][0]));
  expect_equal(weights_of(model), at_epoch_end[2]);
}

TEST_F(EarlyStoppingTest, RestoresBestEpochWhenTheFitCompletes) {
  std::vector<std::vector<torch::Tensor>> at_epoch_end;
  auto capture = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event == Event::epoch_end) at_epoch_end.push_back(weights_of(loop.model()));
  });
  auto loop = make_loop({0.5, 0.7, 0.9, 0.8},
                        {capture, callbacks::early_stopping(EarlyStoppingOptions("score")
                                                                .mode(Mode::max)
                                                                .restore_best(true))});
  EXPECT_EQ(loop.fit(model, 4), FitStatus::completed);
  ASSERT_EQ(at_epoch_end.size(), 4u);
  expect_equal(weights_of(model), at_epoch_end[2]);
}

TEST_F(EarlyStoppingTest, WithoutRestoreBestKeepsLastWeights) {
  std::vector<torch::Tensor> last;
  auto capture = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event == Event::epoch_end) last = weights_of(loop.model());
  });
  auto loop = make_loop(
      {1, 2, 3}, {capture, callbacks::early_stopping(EarlyStoppingOptions("score").patience(2))});
  EXPECT_EQ(loop.fit(model, 3), FitStatus::cancelled);
  expect_equal(weights_of(model), last);
}

TEST_F(EarlyStoppingTest, SaveAndLoadResumeTheCountAndBestWeights) {
  const auto options = EarlyStoppingOptions("score").patience(3).restore_best(true);
  auto first = callbacks::early_stopping(options);
  std::stringstream stream;
  std::vector<torch::Tensor> best;
  // As a checkpoint would: save during the fit, here after epoch 3 of 3.
  auto save = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event != Event::epoch_end) return;
    if (loop.state().epoch == 0) best = weights_of(loop.model());
    torch::serialize::OutputArchive archive;
    first->save(archive);
    stream.str("");
    archive.save_to(stream);
  });
  auto loop = make_loop({1.0, 2.0, 3.0}, {first, save});  // best at epoch 1, waited 2
  EXPECT_EQ(loop.fit(model, 3), FitStatus::completed);

  auto resumed = callbacks::early_stopping(options);
  torch::serialize::InputArchive archive;
  archive.load_from(stream);
  resumed->load(archive);
  int64_t epochs = 0;
  auto second = make_loop({4.0, 5.0, 6.0}, {count_epochs(epochs), resumed});
  // One more bad epoch completes the patience of 3.
  EXPECT_EQ(second.fit(model, 3), FitStatus::cancelled);
  EXPECT_EQ(epochs, 1);
  // The best weights came through the archive and were restored.
  expect_equal(weights_of(model), best);

  // A round trip keeps every value.
  torch::serialize::OutputArchive again;
  auto copy = callbacks::early_stopping(options);
  torch::serialize::InputArchive in;
  stream.seekg(0);
  in.load_from(stream);
  copy->load(in);
  copy->save(again);
  std::stringstream second_stream;
  again.save_to(second_stream);
  torch::serialize::InputArchive reread;
  reread.load_from(second_stream);
  for (const char* key : {"best", "wait", "best_epoch", "best_weight_count"}) {
    torch::Tensor a;
    torch::Tensor b;
    torch::serialize::InputArchive original;
    stream.seekg(0);
    original.load_from(stream);
    original.read(key, a);
    reread.read(key, b);
    EXPECT_TRUE(torch::equal(a, b)) << key;
  }
}

TEST_F(EarlyStoppingTest, NanMonitorIsAnError) {
  auto loop = make_loop({std::numeric_limits<double>::quiet_NaN()},
                        {callbacks::early_stopping(EarlyStoppingOptions("score"))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr(
                  "callback early_stopping:score failed at epoch_end: early_stopping: monitor "
                  "\"score\" is nan at epoch 1")));
}

TEST_F(EarlyStoppingTest, AValidationMonitorWithoutValidationDataFailsAtFitStart) {
  int64_t epochs = 0;
  auto loop = make_loop({1.0}, {count_epochs(epochs),
                                callbacks::early_stopping(EarlyStoppingOptions("val_score"))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr(
                  "callback early_stopping:val_score failed at fit_start: early_stopping: monitor "
                  "\"val_score\" needs validation data, and this loop has none; give the "
                  "TrainingLoop validation data or monitor \"score\"")));
  EXPECT_EQ(epochs, 0);
}

TEST_F(EarlyStoppingTest, UnknownMonitorFailsAtFitStart) {
  auto loop = make_loop({1.0}, {callbacks::early_stopping(EarlyStoppingOptions("scor"))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr("early_stopping: no metric named \"scor\"; known: "
                                             "loss, score, val_loss, val_score")));
}

TEST_F(EarlyStoppingTest, RejectsBadOptions) {
  EXPECT_THAT([] { callbacks::early_stopping(EarlyStoppingOptions("loss").patience(-2)); },
              ThrowsMessage<Error>(HasSubstr("patience is -2, expected >= 0")));
  EXPECT_THAT([] { callbacks::early_stopping(EarlyStoppingOptions("loss").min_delta(-0.1)); },
              ThrowsMessage<Error>(HasSubstr("min_delta is -0.1, expected >= 0")));
  EXPECT_THAT([] { callbacks::early_stopping(EarlyStoppingOptions("")); },
              ThrowsMessage<Error>(HasSubstr("monitor is empty")));
  EXPECT_EQ(callbacks::early_stopping(EarlyStoppingOptions("loss"))->state_key(),
            "early_stopping:loss");
}

}  // namespace
}  // namespace trainloop
