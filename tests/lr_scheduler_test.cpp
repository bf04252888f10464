#include "trainloop/callbacks/lr_scheduler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "trainloop/callbacks/csv_logger.h"
#include "trainloop/callbacks/tensorboard.h"
#include "trainloop/error.h"
#include "trainloop/schedule.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

// Same tolerances as schedule_test.cpp: closed forms agree to rounding,
// PyTorch's goldens to its recursive drift.
constexpr double kClosedForm = 1e-12;
constexpr double kGolden = 1e-9;

void expect_close(double actual, double expected, double relative, const std::string& where) {
  EXPECT_NEAR(actual, expected, relative * std::abs(expected) + 1e-15) << where;
}

nlohmann::json one_cycle_goldens() {
  const std::string path = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/schedule_goldens.json";
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(file)["one_cycle"];
}

data::TensorDataset make_dataset(int64_t size, uint64_t seed) {
  torch::manual_seed(seed);
  return data::TensorDataset(torch::randn({size, 4}), torch::randint(0, 3, {size}));
}

// What each update saw at update_start, i.e. after the scheduler ran and
// right before optimizer.step().
struct UpdateRecord {
  std::vector<int64_t> steps;
  std::vector<double> rates;
  std::vector<double> momenta;  // SGD momentum or Adam beta1, when asked
  std::vector<std::vector<double>> group_rates;

  enum class Read { nothing, sgd_momentum, adam_beta1 };

  std::shared_ptr<Callback> callback(Read read = Read::nothing) {
    return callbacks::lambda(
        [this, read](Event event, TrainingLoop& loop) {
          if (event != Event::update_start) return;
          steps.push_back(loop.state().global_step);
          rates.push_back(loop.state().learning_rate());
          std::vector<double> groups;
          for (auto& group : loop.optimizer().param_groups()) {
            groups.push_back(group.options().get_lr());
          }
          group_rates.push_back(groups);
          auto& options = loop.optimizer().param_groups().front().options();
          if (read == Read::sgd_momentum) {
            momenta.push_back(static_cast<torch::optim::SGDOptions&>(options).momentum());
          } else if (read == Read::adam_beta1) {
            auto& adam = static_cast<torch::optim::AdamOptions&>(options);
            momenta.push_back(std::get<0>(adam.betas()));
          }
        },
        "record");
  }
};

struct LrSchedulerTest : testing::Test {
  torch::nn::Linear model{4, 3};
  // 4 training batches and 2 validation batches of 4.
  data::TensorDataset train = make_dataset(16, 1);
  data::TensorDataset valid = make_dataset(8, 2);
  UpdateRecord record;

  TrainingLoop make_loop(torch::optim::Optimizer& optimizer,
                         std::vector<std::shared_ptr<Callback>> callbacks,
                         int64_t batch_size = 4) {
    return TrainingLoop(data::Epochs(train, batch_size).seed(3), data::Batches(valid, 4), optimizer,
                        losses::cross_entropy, {}, std::move(callbacks));
  }
};

// The seed's BERT-CoLA schedule (warm-up 5 of the 12 steps here), through
// The factory takes its required argument in its options, as the others do;
// the older form with the schedule apart gives the same rates.
TEST_F(LrSchedulerTest, OptionsHoldTheScheduleAndOptionsWithoutOneAreAnError) {
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(1.0));
  const Schedule schedule({{shapes::linear, 0.4, 0.0}});
  auto loop = make_loop(optimizer, {callbacks::lr_scheduler(callbacks::LrSchedulerOptions(schedule).per_epoch(true)),
                                    record.callback()});
  loop.fit(model, 2);
  const std::vector<double> from_options = record.rates;
  record.rates.clear();
  torch::optim::SGD second(model->parameters(), torch::optim::SGDOptions(1.0));
  auto apart = make_loop(second, {callbacks::lr_scheduler(schedule, callbacks::LrSchedulerOptions().per_epoch(true)),
                                  record.callback()});
  apart.fit(model, 2);
  ASSERT_EQ(from_options.size(), 8u);
  EXPECT_EQ(record.rates, from_options);
  EXPECT_DOUBLE_EQ(from_options.front(), 0.4);
  EXPECT_DOUBLE_EQ(from_options.back(), 0.2);
  EXPECT_THAT([] { callbacks::lr_scheduler(callbacks::LrSchedulerOptions()); },
              testing::ThrowsMessage<Error>(HasSubstr("lr_scheduler: the options hold no schedule")));
}

// 3 epochs × 4 batches.
TEST_F(LrSchedulerTest, WarmupAndDecayThroughTheLoop) {
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(1.0));
  const double peak = 2e-3;
  auto scheduler = callbacks::lr_scheduler(Schedule({
      {shapes::linear, 0.0, peak, 5},
      {shapes::linear, {}, 0.0},
  }));
  auto loop = make_loop(optimizer, {scheduler, record.callback()});
  EXPECT_EQ(scheduler->state_key(), "lr_scheduler");
  loop.fit(model, 3);
  ASSERT_EQ(record.rates.size(), 12u);
  for (size_t k = 0; k < 12; ++k) {
    EXPECT_EQ(record.steps[k], static_cast<int64_t>(k));
    const double x = static_cast<double>(k);
    expect_close(record.rates[k], k < 5 ? peak * x / 5 : peak * (12 - x) / 7, kClosedForm,
                 "step " + std::to_string(k));
  }
  EXPECT_EQ(record.rates.front(), 0.0);
  EXPECT_EQ(record.rates[5], peak);
}

// The same BERT-CoLA curve as the CSV log and TensorBoard record it: the row
// or value of update k (step k + 1) holds the rate that update used.
TEST_F(LrSchedulerTest, WarmupAndDecayCurveInTheCsvLogAndTensorBoard) {
  const std::string tools = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/python/tfevents.py";
  ASSERT_TRUE(std::filesystem::exists(tools)) << tools << " is missing from the source tree";
  ASSERT_TRUE(std::filesystem::exists(TRAINLOOP_PYTHON))
      << "no Python to run " << tools << " with (" << TRAINLOOP_PYTHON << "): install python3";
  const auto dir = std::filesystem::temp_directory_path() /
                   ("trainloop_lr_curve_" + std::to_string(getpid()));
  std::filesystem::remove_all(dir);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(1.0));
  const double peak = 2e-3;
  auto loop = make_loop(
      optimizer,
      {callbacks::lr_scheduler(Schedule({{shapes::linear, 0.0, peak, 5}, {shapes::linear, {}, 0.0}})),
       callbacks::csv_logger((dir / "log.csv").string()),
       callbacks::tensorboard(callbacks::TensorBoardOptions()
                                  .log_dir((dir / "tb").string())
                                  .run_name("bert")
                                  .log_every_n_steps(1))});
  loop.fit(model, 3);
  const auto closed_form = [&](int64_t step) {  // step = updates done, 1..12
    const double k = static_cast<double>(step - 1);
    return k < 5 ? peak * k / 5 : peak * (12 - k) / 7;
  };

  std::ifstream csv(dir / "log.csv");
  std::string line;
  std::getline(csv, line);
  ASSERT_EQ(line.rfind("epoch,batch,phase,step,lr,", 0), 0u) << line;
  int rows = 0;
  while (std::getline(csv, line)) {
    std::vector<std::string> fields;
    std::stringstream row(line);
    for (std::string field; std::getline(row, field, ',');) fields.push_back(field);
    if (fields.at(2) != "train") continue;
    expect_close(std::stod(fields.at(4)), closed_form(std::stoll(fields.at(3))), kClosedForm, line);
    ++rows;
  }
  EXPECT_EQ(rows, 12);

  const std::string command = std::string(TRAINLOOP_PYTHON) + " " + tools + " --strict --tsv " +
                              (dir / "tb").string();
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char buffer[512];
  int values = 0;
  while (fgets(buffer, sizeof buffer, pipe) != nullptr) {
    std::stringstream fields(buffer);
    std::string run, tag;
    int64_t step = 0;
    double wall_time = 0, value = 0;
    fields >> run >> tag >> step >> wall_time >> value;
    if (run != "bert/train" || tag != "learning_rate") continue;
    // TensorBoard stores scalars as float32.
    EXPECT_EQ(static_cast<float>(value), static_cast<float>(closed_form(step))) << buffer;
    ++values;
  }
  EXPECT_EQ(pclose(pipe), 0) << command;
  EXPECT_EQ(values, 12);
  std::filesystem::remove_all(dir);
}

TEST_F(LrSchedulerTest, PerEpochChangesTheRateAtEpochStart) {
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(1.0));
  std::vector<double> at_epoch_start;
  auto loop = make_loop(
      optimizer,
      {callbacks::lr_scheduler(Schedule({{shapes::linear, 0.3, 0.0}}),
                               callbacks::LrSchedulerOptions().per_epoch(true)),
       callbacks::lambda([&](Event event, TrainingLoop& l) {
         if (event == Event::epoch_start) at_epoch_start.push_back(l.state().learning_rate());
       }),
       record.callback()});
  loop.fit(model, 3);
  ASSERT_EQ(at_epoch_start.size(), 3u);
  const std::vector<double> expected = {0.3, 0.2, 0.1};
  for (size_t e = 0; e < 3; ++e) expect_close(at_epoch_start[e], expected[e], kClosedForm, "epoch");
  ASSERT_EQ(record.rates.size(), 12u);
  for (size_t k = 0; k < 12; ++k) EXPECT_EQ(record.rates[k], at_epoch_start[k / 4]) << k;
}

TEST_F(LrSchedulerTest, EveryParameterGroupGetsTheRate) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{model->weight},
                      std::make_unique<torch::optim::AdamOptions>(0.5));
  groups.emplace_back(std::vector<torch::Tensor>{model->bias},
                      std::make_unique<torch::optim::AdamOptions>(0.7));
  torch::optim::Adam optimizer(std::move(groups), torch::optim::AdamOptions(0.9));
  const Schedule schedule = schedules::warmup_cosine(0.01, 4);
  auto loop = make_loop(optimizer, {callbacks::lr_scheduler(schedule), record.callback()});
  loop.fit(model, 3);
  ASSERT_EQ(record.group_rates.size(), 12u);
  for (size_t k = 0; k < 12; ++k) {
    const double expected = schedule.rate(static_cast<int64_t>(k), 12);
    ASSERT_EQ(record.group_rates[k].size(), 2u);
    EXPECT_EQ(record.group_rates[k][0], expected) << k;
    EXPECT_EQ(record.group_rates[k][1], expected) << k;
  }
}

// One-cycle through a real loop of 100 updates (2 epochs × 50 batches of 1),
// against PyTorch's OneCycleLR on SGD with momentum.
TEST_F(LrSchedulerTest, OneCycleCyclesSgdMomentumLikePyTorch) {
  const nlohmann::json golden = one_cycle_goldens();
  train = make_dataset(50, 4);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  const Schedule schedule = schedules::one_cycle(golden["max_lr"].get<double>());
  auto loop = make_loop(
      optimizer,
      {callbacks::lr_scheduler(schedule), record.callback(UpdateRecord::Read::sgd_momentum)},
      /*batch_size=*/1);
  loop.fit(model, 2);
  const auto lr = golden["sgd"]["lr"].get<std::vector<double>>();
  const auto momentum = golden["sgd"]["momentum"].get<std::vector<double>>();
  ASSERT_EQ(record.rates.size(), lr.size());
  ASSERT_EQ(record.momenta.size(), momentum.size());
  for (size_t k = 0; k < lr.size(); ++k) {
    expect_close(record.rates[k], lr[k], kGolden, "lr step " + std::to_string(k));
    expect_close(record.momenta[k], momentum[k], kGolden, "momentum step " + std::to_string(k));
  }
}

TEST_F(LrSchedulerTest, OneCycleCyclesAdamBeta1LikePyTorch) {
  const nlohmann::json golden = one_cycle_goldens();
  train = make_dataset(50, 4);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(0.1));
  const Schedule schedule = schedules::one_cycle(golden["max_lr"].get<double>());
  auto loop = make_loop(
      optimizer,
      {callbacks::lr_scheduler(schedule), record.callback(UpdateRecord::Read::adam_beta1)},
      /*batch_size=*/1);
  loop.fit(model, 2);
  const auto lr = golden["adam"]["lr"].get<std::vector<double>>();
  const auto beta1 = golden["adam"]["beta1"].get<std::vector<double>>();
  ASSERT_EQ(record.rates.size(), lr.size());
  ASSERT_EQ(record.momenta.size(), beta1.size());
  for (size_t k = 0; k < lr.size(); ++k) {
    expect_close(record.rates[k], lr[k], kGolden, "lr step " + std::to_string(k));
    expect_close(record.momenta[k], beta1[k], kGolden, "beta1 step " + std::to_string(k));
  }
  // beta2 is left alone.
  auto& options = static_cast<torch::optim::AdamOptions&>(optimizer.param_groups()[0].options());
  EXPECT_EQ(std::get<1>(options.betas()), 0.999);
}

TEST_F(LrSchedulerTest, MomentumCyclingOnAdagradIsAnError) {
  torch::optim::Adagrad optimizer(model->parameters(), torch::optim::AdagradOptions(0.1));
  auto loop = make_loop(optimizer, {callbacks::lr_scheduler(schedules::one_cycle(0.1))});
  EXPECT_THAT([&] { loop.fit(model, 1); },
              ThrowsMessage<Error>(HasSubstr(
                  "needs SGD, Adam or AdamW; the optimizer is torch::optim::Adagrad")));
  // Without momentum cycling any optimizer is fine.
  auto plain = make_loop(optimizer, {callbacks::lr_scheduler(schedules::one_cycle(
                                         0.1, schedules::OneCycleOptions().cycle_momentum(false))),
                                     record.callback()});
  plain.fit(model, 3);
  ASSERT_EQ(record.rates.size(), 12u);
  EXPECT_EQ(record.rates.back(), schedules::one_cycle(0.1).rate(11, 12));
}

// With gradients accumulated over 2 batches there are 6 updates, not 12:
// the default total counts updates (as does total_steps(6) said explicitly),
// and every batch of a group sees the same rate.
TEST_F(LrSchedulerTest, TotalStepsCountUpdatesWithAccumulatedGradients) {
  const std::vector<double> expected = {0.0, 0.3, 0.6, 0.45, 0.3, 0.15};
  for (const auto& options : {callbacks::LrSchedulerOptions(),
                              callbacks::LrSchedulerOptions().total_steps(6)}) {
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(1.0));
    record.rates.clear();
    auto loop = make_loop(optimizer, {callbacks::lr_scheduler(schedules::warmup_linear(0.6, 2), options),
                                      record.callback()});
    loop.accumulate_gradients(2);
    loop.fit(model, 3);
    ASSERT_EQ(record.rates.size(), expected.size());
    for (size_t k = 0; k < expected.size(); ++k) {
      expect_close(record.rates[k], expected[k], kClosedForm, "update " + std::to_string(k));
    }
  }
}

TEST_F(LrSchedulerTest, ScheduleLongerThanTheFitIsAnError) {
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(1.0));
  auto loop = make_loop(optimizer, {callbacks::lr_scheduler(schedules::warmup_linear(0.1, 20))});
  EXPECT_THAT([&] { loop.fit(model, 3); },
              ThrowsMessage<Error>(HasSubstr(
                  "callback lr_scheduler failed at training_start: Schedule: the segments' step "
                  "counts add up to 20 steps, more than the 12 steps of the fit")));
}

}  // namespace
}  // namespace trainloop
