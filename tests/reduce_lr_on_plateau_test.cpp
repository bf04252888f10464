#include "trainloop/callbacks/reduce_lr_on_plateau.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using callbacks::Mode;
using callbacks::ReduceLrOnPlateauOptions;
using callbacks::ThresholdMode;
using testing::HasSubstr;
using testing::ThrowsMessage;

// A metric named "score" whose value in epoch e is values[e]: it counts its
// resets, which the loop does once per training pass.
class SequenceMetric : public Metric {
 public:
  explicit SequenceMetric(std::shared_ptr<const std::vector<double>> values)
      : values_(std::move(values)) {}
  std::string name() const override { return "score"; }
  void reset() override { ++epoch_; }
  void update(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {}
  double compute() const override {
    if (epoch_ < 1 || epoch_ > static_cast<int64_t>(values_->size())) {
      return std::numeric_limits<double>::quiet_NaN();
    }
    return (*values_)[static_cast<size_t>(epoch_ - 1)];
  }
  std::shared_ptr<Metric> clone() const override {
    return std::make_shared<SequenceMetric>(values_);
  }

 private:
  std::shared_ptr<const std::vector<double>> values_;
  int64_t epoch_ = 0;
};

struct PlateauFixture {
  torch::nn::Linear model{2, 1};
  data::TensorDataset train{torch::randn({8, 2}), torch::randn({8, 1})};

  // Runs one epoch per value with `callback` and returns every group's rate
  // after each epoch_end.
  std::vector<std::vector<double>> run(const std::vector<double>& values,
                                       std::shared_ptr<Callback> callback,
                                       torch::optim::SGD& optimizer) {
    std::vector<std::vector<double>> rates;
    auto record = callbacks::lambda([&](Event event, TrainingLoop& loop) {
      if (event != Event::epoch_end) return;
      std::vector<double> epoch;
      for (auto& group : loop.optimizer().param_groups()) epoch.push_back(group.options().get_lr());
      rates.push_back(epoch);
    });
    TrainingLoop loop(data::Epochs(train, 4), nullptr, optimizer, losses::mse,
                      {std::make_shared<SequenceMetric>(
                          std::make_shared<const std::vector<double>>(values))},
                      {std::move(callback), record});
    loop.fit(model, static_cast<int64_t>(values.size()));
    return rates;
  }
};

TEST(ReduceLrOnPlateauTest, MatchesPyTorchGoldens) {
  std::ifstream file(std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/plateau_goldens.json");
  ASSERT_TRUE(file) << "run tests/python/make_plateau_goldens.py";
  const auto goldens = nlohmann::json::parse(file);
  ASSERT_GE(goldens["cases"].size(), 10u);
  for (const auto& c : goldens["cases"]) {
    const auto& s = c["settings"];
    SCOPED_TRACE(c["sequence"].get<std::string>() + " " + s.dump());
    auto options = ReduceLrOnPlateauOptions("score")
                       .mode(s["mode"] == "min" ? Mode::min : Mode::max)
                       .factor(s["factor"].get<double>())
                       .patience(s["patience"].get<int64_t>())
                       .threshold(s["threshold"].get<double>())
                       .threshold_mode(s["threshold_mode"] == "rel" ? ThresholdMode::rel
                                                                    : ThresholdMode::abs)
                       .cooldown(s["cooldown"].get<int64_t>())
                       .min_lr(s["min_lr"].get<double>())
                       .eps(s["eps"].get<double>());
    PlateauFixture fixture;
    torch::optim::SGD optimizer(fixture.model->parameters(),
                                torch::optim::SGDOptions(c["initial_lr"].get<double>()));
    const auto values = c["values"].get<std::vector<double>>();
    const auto expected = c["rates"].get<std::vector<double>>();
    const auto rates = fixture.run(values, callbacks::reduce_lr_on_plateau(options), optimizer);
    ASSERT_EQ(rates.size(), expected.size());
    for (size_t i = 0; i < rates.size(); ++i) {
      EXPECT_NEAR(rates[i][0], expected[i], 1e-12) << "after epoch " << i + 1;
    }
  }
}

TEST(ReduceLrOnPlateauTest, ReducesEveryGroupAndRespectsMinLr) {
  PlateauFixture fixture;
  torch::optim::SGD optimizer(
      {torch::optim::OptimizerParamGroup({fixture.model->weight},
                                         std::make_unique<torch::optim::SGDOptions>(1.0)),
       torch::optim::OptimizerParamGroup({fixture.model->bias},
                                         std::make_unique<torch::optim::SGDOptions>(0.03))},
      torch::optim::SGDOptions(0.1));
  // Flat from the start: patience 0 reduces after each epoch but the first.
  const auto rates = fixture.run(
      {1, 1, 1, 1},
      callbacks::reduce_lr_on_plateau(ReduceLrOnPlateauOptions("score").patience(0).factor(0.5)
                                          .min_lr(0.02)),
      optimizer);
  ASSERT_EQ(rates.size(), 4u);
  EXPECT_DOUBLE_EQ(rates[0][0], 1.0);
  EXPECT_DOUBLE_EQ(rates[0][1], 0.03);
  EXPECT_DOUBLE_EQ(rates[1][0], 0.5);
  EXPECT_DOUBLE_EQ(rates[1][1], 0.02);  // max(0.015, min_lr)
  EXPECT_DOUBLE_EQ(rates[3][0], 0.125);
  EXPECT_DOUBLE_EQ(rates[3][1], 0.02);
}

TEST(ReduceLrOnPlateauTest, SaveAndLoadContinueTheCount) {
  // Uninterrupted: best 1.0 at epoch 1, bad epochs 2..4 → reduce after epoch 4 (patience 2).
  const std::vector<double> values{1.0, 1.0, 1.0, 1.0, 1.0};
  const auto options = ReduceLrOnPlateauOptions("score").patience(2).factor(0.5);
  PlateauFixture fixture;
  // The counters reset when a fit ends, so save them from inside one, as a checkpoint does.
  std::stringstream stream;
  {
    auto saver = callbacks::reduce_lr_on_plateau(options);
    auto save = callbacks::lambda([&](Event event, TrainingLoop&) {
      if (event != Event::epoch_end) return;
      torch::serialize::OutputArchive archive;
      saver->save(archive);
      stream.str("");
      archive.save_to(stream);
    });
    torch::optim::SGD optimizer(fixture.model->parameters(), torch::optim::SGDOptions(0.1));
    TrainingLoop loop(data::Epochs(fixture.train, 4), nullptr, optimizer, losses::mse,
                      {std::make_shared<SequenceMetric>(
                          std::make_shared<const std::vector<double>>(values))},
                      {saver, save});
    loop.fit(fixture.model, 2);  // best 1.0, one bad epoch
  }
  auto resumed = callbacks::reduce_lr_on_plateau(options);
  torch::serialize::InputArchive archive;
  archive.load_from(stream);
  resumed->load(archive);
  torch::optim::SGD third(fixture.model->parameters(), torch::optim::SGDOptions(0.1));
  const auto after = fixture.run({1.0, 1.0, 1.0}, resumed, third);
  // Epochs 3, 4, 5 of the whole run: bad epochs 2 and 3 → reduced after epoch 4.
  EXPECT_DOUBLE_EQ(after[0][0], 0.1);
  EXPECT_DOUBLE_EQ(after[1][0], 0.05);
  EXPECT_DOUBLE_EQ(after[2][0], 0.05);
}

TEST(ReduceLrOnPlateauTest, AValidationMonitorWithoutValidationDataFailsAtFitStart) {
  PlateauFixture fixture;
  torch::optim::SGD optimizer(fixture.model->parameters(), torch::optim::SGDOptions(0.1));
  TrainingLoop loop(data::Epochs(fixture.train, 4), nullptr, optimizer, losses::mse, {},
                    {callbacks::reduce_lr_on_plateau(ReduceLrOnPlateauOptions("val_loss"))});
  EXPECT_THAT([&] { loop.fit(fixture.model, 1); },
              ThrowsMessage<Error>(HasSubstr(
                  "callback reduce_lr_on_plateau:val_loss failed at fit_start: reduce_lr_on_plateau: "
                  "monitor \"val_loss\" needs validation data, and this loop has none")));
}

TEST(ReduceLrOnPlateauTest, UnknownMonitorFailsAtFitStart) {
  PlateauFixture fixture;
  torch::optim::SGD optimizer(fixture.model->parameters(), torch::optim::SGDOptions(0.1));
  int epochs = 0;
  TrainingLoop loop(data::Epochs(fixture.train, 4), nullptr, optimizer, losses::mse, {},
                    {callbacks::reduce_lr_on_plateau(ReduceLrOnPlateauOptions("acuracy")),
                     callbacks::lambda([&](Event event, TrainingLoop&) {
                       if (event == Event::epoch_start) ++epochs;
                     })});
  EXPECT_THAT([&] { loop.fit(fixture.model, 1); },
              ThrowsMessage<Error>(HasSubstr("fit_start: reduce_lr_on_plateau: no metric "
                                             "named \"acuracy\"; known: loss, val_loss")));
  EXPECT_EQ(epochs, 0);
}

TEST(ReduceLrOnPlateauTest, RejectsBadOptions) {
  using callbacks::reduce_lr_on_plateau;
  EXPECT_THAT([] { reduce_lr_on_plateau(ReduceLrOnPlateauOptions("loss").factor(1.0)); },
              ThrowsMessage<Error>(HasSubstr("factor is 1, expected in [0, 1)")));
  EXPECT_THAT([] { reduce_lr_on_plateau(ReduceLrOnPlateauOptions("loss").patience(-1)); },
              ThrowsMessage<Error>(HasSubstr("patience is -1, expected >= 0")));
  EXPECT_THAT([] { reduce_lr_on_plateau(ReduceLrOnPlateauOptions("loss").min_lr(-0.5)); },
              ThrowsMessage<Error>(HasSubstr("min_lr is -0.5, expected >= 0")));
  EXPECT_THAT([] { reduce_lr_on_plateau(ReduceLrOnPlateauOptions("")); },
              ThrowsMessage<Error>(HasSubstr("monitor is empty")));
}

TEST(ReduceLrOnPlateauTest, StateKey) {
  EXPECT_EQ(callbacks::reduce_lr_on_plateau(ReduceLrOnPlateauOptions("loss"))->state_key(),
            "reduce_lr_on_plateau:loss");
}

}  // namespace
}  // namespace trainloop
