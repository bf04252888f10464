#include "trainloop/schedule.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainloop/error.h"

namespace trainloop {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

// Closed forms are evaluated in a different order than the schedule does,
// so they agree to rounding, not to the bit.
constexpr double kClosedForm = 1e-12;
// PyTorch's LinearLR and CosineAnnealingLR compute each rate from the
// previous one; their drift stays far below this.
constexpr double kGolden = 1e-9;

void expect_close(double actual, double expected, double relative, const std::string& where) {
  EXPECT_NEAR(actual, expected, relative * std::abs(expected) + 1e-15) << where;
}

nlohmann::json goldens() {
  const std::string path = std::string(TRAINLOOP_SOURCE_DIR) + "/tests/data/schedule_goldens.json";
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(file);
}

TEST(ShapesTest, InterpolateBetweenRates) {
  EXPECT_DOUBLE_EQ(shapes::linear(2, 4, 0), 2);
  EXPECT_DOUBLE_EQ(shapes::linear(2, 4, 0.25), 2.5);
  EXPECT_DOUBLE_EQ(shapes::linear(2, 4, 1), 4);
  EXPECT_DOUBLE_EQ(shapes::cosine(2, 4, 0), 2);
  EXPECT_DOUBLE_EQ(shapes::cosine(2, 4, 0.5), 3);
  EXPECT_DOUBLE_EQ(shapes::cosine(2, 4, 1), 4);
  EXPECT_DOUBLE_EQ(shapes::cosine(0, 1, 1.0 / 3), 0.25);  // (1 - cos(pi/3)) / 2
  EXPECT_DOUBLE_EQ(shapes::exponential(1e-4, 1e-2, 0), 1e-4);
  EXPECT_DOUBLE_EQ(shapes::exponential(1e-4, 1e-2, 0.5), 1e-3);
  EXPECT_DOUBLE_EQ(shapes::exponential(1e-4, 1e-2, 1), 1e-2);
  EXPECT_DOUBLE_EQ(shapes::constant(2, 4, 0), 4);
  EXPECT_DOUBLE_EQ(shapes::constant(2, 4, 0.7), 4);
  const Shape square = shapes::from_weight([](double t) { return t * t; });
  EXPECT_DOUBLE_EQ(square(2, 4, 0.5), 2.5);
  EXPECT_DOUBLE_EQ(square(2, 4, 1), 4);
}

TEST(ShapesTest, ExponentialNeedsPositiveRates) {
  EXPECT_THAT([] { shapes::exponential(0, 1e-2, 0.5); },
              ThrowsMessage<Error>(HasSubstr("start rate 0 and end rate 0.01, expected both > 0")));
}

// The seed's BERT-CoLA schedule: 0 → peak over 10 steps, then → 0 at the end.
TEST(ScheduleTest, WarmupThenDecayMatchesClosedFormAtEveryStep) {
  const double peak = 2e-5;
  const Schedule schedule({{shapes::linear, 0.0, peak, 10}, {shapes::linear, {}, 0.0}});
  const int64_t total = 30;
  for (int64_t k = 0; k < total; ++k) {
    const double expected = k < 10 ? peak * static_cast<double>(k) / 10
                                   : peak * static_cast<double>(total - k) / (total - 10);
    expect_close(schedule.rate(k, total), expected, kClosedForm, "step " + std::to_string(k));
  }
  // The boundaries, exactly: the first update uses 0, update 11 the peak,
  // the last update peak / 20, and 0 is reached at the end of training.
  EXPECT_EQ(schedule.rate(0, total), 0.0);
  EXPECT_DOUBLE_EQ(schedule.rate(9, total), 0.9 * peak);
  EXPECT_EQ(schedule.rate(10, total), peak);
  EXPECT_DOUBLE_EQ(schedule.rate(29, total), peak / 20);
  EXPECT_EQ(schedule.rate(30, total), 0.0);
  EXPECT_EQ(schedule.rate(1000, total), 0.0);
}

TEST(ScheduleTest, ReadyMadeWarmupsMatchClosedForms) {
  const double peak = 0.1;
  const int64_t total = 25;
  const int64_t warmup = 5;
  const Schedule linear = schedules::warmup_linear(peak, warmup);
  const Schedule cosine = schedules::warmup_cosine(peak, warmup, 0.01);
  for (int64_t k = 0; k < total; ++k) {
    const double x = static_cast<double>(k);
    const double up = peak * x / warmup;
    const double progress = (x - warmup) / (total - warmup);
    expect_close(linear.rate(k, total), k < warmup ? up : peak * (1 - progress), kClosedForm,
                 "linear step " + std::to_string(k));
    expect_close(cosine.rate(k, total),
                 k < warmup ? up : 0.01 + (peak - 0.01) * (1 + std::cos(M_PI * progress)) / 2,
                 kClosedForm, "cosine step " + std::to_string(k));
  }
}

// Three segments and a fill: each segment's first step uses its start rate,
// its end rate is reached at the next segment's first step.
TEST(ScheduleTest, SegmentBoundariesAreExact) {
  const Schedule schedule({{shapes::constant, 0.5, 0.5, 4},
                           {shapes::linear, 1.0, 3.0, 4},
                           {shapes::exponential, {}, 0.03},
                           {shapes::constant, {}, 0.001, 2}});
  const int64_t total = 14;  // the fill segment gets 14 - 10 = 4 steps
  const std::vector<double> expected = {
      0.5, 0.5, 0.5, 0.5,                                       // constant
      1.0, 1.5, 2.0, 2.5,                                       // linear, t = i / 4
      3.0, 3.0 * std::pow(0.01, 0.25), 3.0 * std::pow(0.01, 0.5),  // exponential 3 → 0.03
      3.0 * std::pow(0.01, 0.75),
      0.001, 0.001};                                            // constant
  for (int64_t k = 0; k < total; ++k) {
    expect_close(schedule.rate(k, total), expected[static_cast<size_t>(k)], kClosedForm,
                 "step " + std::to_string(k));
  }
  EXPECT_EQ(schedule.rate(14, total), 0.001);
}

TEST(ScheduleTest, FixedSegmentsShorterThanTheFitHoldTheLastEndRate) {
  const Schedule schedule({{shapes::linear, 1.0, 0.0, 4}});
  EXPECT_EQ(schedule.rate(2, 10), 0.5);
  EXPECT_EQ(schedule.rate(4, 10), 0.0);
  EXPECT_EQ(schedule.rate(9, 10), 0.0);
}

TEST(ScheduleTest, ZeroStepSegmentIsSkipped) {
  const Schedule schedule({{shapes::constant, 1.0, 1.0, 0}, {shapes::linear, 2.0, 4.0}});
  EXPECT_EQ(schedule.rate(0, 4), 2.0);
  EXPECT_EQ(schedule.rate(2, 4), 3.0);
  // An empty fill segment (fixed counts equal the fit) is fine too.
  const Schedule full({{shapes::linear, 1.0, 2.0, 4}, {shapes::linear, {}, 0.0}});
  EXPECT_EQ(full.rate(3, 4), 1.75);
}

TEST(ScheduleTest, ConstructionErrorsNameTheSegment) {
  EXPECT_THAT([] { Schedule(std::vector<Segment>{}); },
              ThrowsMessage<Error>(HasSubstr("no segments")));
  EXPECT_THAT([] { Schedule({{shapes::linear, {}, 1.0, 3}}); },
              ThrowsMessage<Error>(HasSubstr("segment 0 has no start rate")));
  EXPECT_THAT([] { Schedule({{shapes::linear, 0.0, 1.0, 3}, {shapes::linear, {}, 0.0, -2}}); },
              ThrowsMessage<Error>(HasSubstr("segment 1 has step_count -2, expected >= 0")));
  EXPECT_THAT(
      [] {
        Schedule({{shapes::linear, 0.0, 1.0},
                  {shapes::linear, {}, 0.5, 3},
                  {shapes::linear, {}, 0.0}});
      },
      ThrowsMessage<Error>(HasSubstr("segments 0 and 2 both have no step count")));
  EXPECT_THAT([] { Schedule({{shapes::linear, 0.0, NAN, 3}}); },
              ThrowsMessage<Error>(HasSubstr("segment 0 goes from 0 to nan, expected finite")));
  EXPECT_THAT([] { Schedule({{shapes::linear, 1.0, 0.0, 3}, {shapes::exponential, {}, 0.1}}); },
              ThrowsMessage<Error>(HasSubstr("segment 1: shapes::exponential: start rate 0")));
  EXPECT_THAT([] { Schedule({{nullptr, 0.0, 1.0, 3}}); },
              ThrowsMessage<Error>(HasSubstr("segment 0 has no shape")));
  EXPECT_THAT(
      [] { Schedule({{[](double, double, double) { return INFINITY; }, 0.0, 1.0, 3}}); },
      ThrowsMessage<Error>(HasSubstr("segment 0's shape gives inf at t = 0")));
}

TEST(ScheduleTest, RateErrorsNameTheNumbers) {
  const Schedule schedule({{shapes::linear, 0.0, 1.0, 80}, {shapes::linear, {}, 0.0, 40}});
  EXPECT_THAT([&] { schedule.rate(0, 100); },
              ThrowsMessage<Error>(HasSubstr("add up to 120 steps, more than the 100 steps")));
  EXPECT_THAT([&] { schedule.rate(-1, 200); },
              ThrowsMessage<Error>(HasSubstr("step -1 of 200 total steps, expected both >= 0")));
}

TEST(ScheduleTest, StepDecay) {
  const Schedule schedule = schedules::step_decay(0.1, 0.5, 3);
  const std::vector<double> expected = {0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025};
  for (size_t k = 0; k < expected.size(); ++k) {
    EXPECT_DOUBLE_EQ(schedule.rate(static_cast<int64_t>(k), 7), expected[k]) << k;
  }
  EXPECT_THAT([] { schedules::step_decay(0.1, 0.5, 0); },
              ThrowsMessage<Error>(HasSubstr("every_n_steps 0, expected >= 1")));
}

TEST(ScheduleTest, MomentumIsOptional) {
  const Schedule plain = schedules::warmup_linear(1.0, 2);
  EXPECT_FALSE(plain.has_momentum());
  EXPECT_THAT([&] { plain.momentum(0, 4); },
              ThrowsMessage<Error>(HasSubstr("no momentum schedule")));
  const Schedule with = plain.with_momentum(Schedule({{shapes::constant, 0.9, 0.9}}));
  EXPECT_TRUE(with.has_momentum());
  EXPECT_EQ(with.momentum(3, 4), 0.9);
  EXPECT_EQ(with.rate(1, 4), 0.5);
  EXPECT_FALSE(schedules::one_cycle(0.1, schedules::OneCycleOptions().cycle_momentum(false))
                   .has_momentum());
}

TEST(ScheduleTest, OneCycleMatchesPyTorch) {
  const nlohmann::json golden = goldens()["one_cycle"];
  const Schedule schedule = schedules::one_cycle(golden["max_lr"].get<double>());
  const auto total = golden["total_steps"].get<int64_t>();
  const auto lr = golden["sgd"]["lr"].get<std::vector<double>>();
  const auto momentum = golden["sgd"]["momentum"].get<std::vector<double>>();
  ASSERT_EQ(lr.size(), static_cast<size_t>(total));
  for (int64_t k = 0; k < total; ++k) {
    const auto i = static_cast<size_t>(k);
    expect_close(schedule.rate(k, total), lr[i], kGolden, "lr step " + std::to_string(k));
    expect_close(schedule.momentum(k, total), momentum[i], kGolden,
                 "momentum step " + std::to_string(k));
  }
  // Past the last step the final rate holds.
  EXPECT_EQ(schedule.rate(total + 5, total), schedule.rate(total - 1, total));
}

TEST(ScheduleTest, OneCycleLinearAnnealAndErrors) {
  // pct 0.25 of 9 steps: the first phase ends at step 1.25, the second at 8.
  const Schedule schedule = schedules::one_cycle(
      1.0, schedules::OneCycleOptions().pct_start(0.25).anneal(shapes::linear).div_factor(10));
  EXPECT_DOUBLE_EQ(schedule.rate(0, 9), 0.1);
  EXPECT_DOUBLE_EQ(schedule.rate(1, 9), 0.1 + 0.9 / 1.25);
  const double final_rate = 0.1 / 1e4;
  EXPECT_DOUBLE_EQ(schedule.rate(2, 9), 1.0 + (final_rate - 1.0) * (2 - 1.25) / (8 - 1.25));
  // (end - start) * 1 + start, as PyTorch computes it, is end up to rounding.
  expect_close(schedule.rate(8, 9), final_rate, kClosedForm, "last step");
  EXPECT_DOUBLE_EQ(schedule.momentum(8, 9), 0.95);
  EXPECT_THAT([&] { schedule.rate(0, 4); },
              ThrowsMessage<Error>(HasSubstr("pct_start 0.25 of 4 total steps leaves no warm-up")));
  EXPECT_THAT([] { schedules::one_cycle(0.1, schedules::OneCycleOptions().pct_start(0)); },
              ThrowsMessage<Error>(HasSubstr("pct_start 0, expected in (0, 1]")));
  EXPECT_THAT([] { schedules::one_cycle(-1); },
              ThrowsMessage<Error>(HasSubstr("max_lr -1, expected a finite value > 0")));
}

// PyTorch's LinearLR(start_factor 0.1, total_iters 10) on a base rate of
// 0.05, written as two segments.
TEST(ScheduleTest, SegmentsReproduceLinearLR) {
  const nlohmann::json golden = goldens()["linear_lr"];
  const auto base = golden["base_lr"].get<double>();
  const auto iters = golden["total_iters"].get<int64_t>();
  const Schedule schedule(
      {{shapes::linear, base * golden["start_factor"].get<double>(),
        base * golden["end_factor"].get<double>(), iters},
       {shapes::constant, {}, base * golden["end_factor"].get<double>()}});
  const auto lr = golden["lr"].get<std::vector<double>>();
  const auto total = golden["steps"].get<int64_t>();
  ASSERT_EQ(lr.size(), static_cast<size_t>(total));
  for (int64_t k = 0; k < total; ++k) {
    expect_close(schedule.rate(k, total), lr[static_cast<size_t>(k)], kGolden,
                 "step " + std::to_string(k));
  }
}

// PyTorch's CosineAnnealingLR(T_max 50, eta_min 0.001) over 100 steps: down
// for 50 steps, then (PyTorch's curve goes on) back up for 50.
TEST(ScheduleTest, SegmentsReproduceCosineAnnealingLR) {
  const nlohmann::json golden = goldens()["cosine_annealing_lr"];
  const auto base = golden["base_lr"].get<double>();
  const auto eta_min = golden["eta_min"].get<double>();
  const auto t_max = golden["t_max"].get<int64_t>();
  const Schedule schedule(
      {{shapes::cosine, base, eta_min, t_max}, {shapes::cosine, {}, base, t_max}});
  const auto lr = golden["lr"].get<std::vector<double>>();
  const auto total = golden["steps"].get<int64_t>();
  ASSERT_EQ(lr.size(), static_cast<size_t>(total));
  for (int64_t k = 0; k < total; ++k) {
    expect_close(schedule.rate(k, total), lr[static_cast<size_t>(k)], kGolden,
                 "step " + std::to_string(k));
  }
}

}  // namespace
}  // namespace trainloop
