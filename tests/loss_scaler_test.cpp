#include "trainloop/loss_scaler.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "trainloop/error.h"

namespace trainloop {
namespace {

using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

// One parameter whose gradient the test sets, and an SGD step of lr 1.
struct OneParameter {
  torch::Tensor weight = torch::zeros({3}, torch::requires_grad());
  torch::optim::SGD optimizer{{weight}, torch::optim::SGDOptions(1.0)};
  void set_gradient(std::vector<float> values) {
    weight.mutable_grad() = torch::tensor(values);
  }
};

TEST(LossScalerTest, DefaultsAreGradScalers) {
  const LossScaler scaler;
  EXPECT_EQ(scaler.scale_value(), 65536.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
  EXPECT_EQ(scaler.options().growth_factor(), 2.0);
  EXPECT_EQ(scaler.options().backoff_factor(), 0.5);
  EXPECT_EQ(scaler.options().growth_interval(), 2000);
}

TEST(LossScalerTest, ScalesTheLossAndUnscalesTheGradients) {
  LossScaler scaler(LossScalerOptions().init_scale(8));
  OneParameter p;
  const torch::Tensor loss = (p.weight * torch::tensor({1.0F, 2.0F, 3.0F})).sum();
  const torch::Tensor scaled = scaler.scale(loss);
  EXPECT_EQ(scaled.dim(), 0);
  scaled.backward();
  EXPECT_TRUE(torch::equal(p.weight.grad(), torch::tensor({8.0F, 16.0F, 24.0F})));
  scaler.unscale_(p.optimizer);
  EXPECT_TRUE(torch::equal(p.weight.grad(), torch::tensor({1.0F, 2.0F, 3.0F})));
  EXPECT_FALSE(scaler.found_inf());
  EXPECT_TRUE(scaler.step(p.optimizer));
  EXPECT_TRUE(torch::equal(p.weight.detach(), torch::tensor({-1.0F, -2.0F, -3.0F})));
}

TEST(LossScalerTest, SkipsAnUpdateWithInfOrNanAndBacksOff) {
  for (const float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    LossScaler scaler(LossScalerOptions().init_scale(1024));
    OneParameter p;
    p.set_gradient({1, bad, 1});
    EXPECT_FALSE(scaler.step(p.optimizer));
    EXPECT_TRUE(scaler.found_inf());
    EXPECT_TRUE(torch::equal(p.weight.detach(), torch::zeros({3})));
    scaler.update();
    EXPECT_EQ(scaler.scale_value(), 512.0);
    EXPECT_EQ(scaler.growth_tracker(), 0);
  }
}

// The scale by hand: growth_interval 3, growth 2, backoff 0.5; a clean
// update counts, an overflow halves and restarts the count, the third clean
// update in a row doubles.
TEST(LossScalerTest, ScaleSequenceFollowsGradScalersRule) {
  LossScaler scaler(LossScalerOptions().init_scale(16).growth_interval(3));
  OneParameter p;
  const std::vector<bool> overflows = {false, false, true, false, false, false, false, true, true};
  const std::vector<double> expected_after = {16, 16, 8, 8, 8, 16, 16, 8, 4};
  const std::vector<int64_t> tracker_after = {1, 2, 0, 1, 2, 0, 1, 0, 0};
  for (size_t i = 0; i < overflows.size(); ++i) {
    p.set_gradient({1, overflows[i] ? std::numeric_limits<float>::infinity() : 1.0F, 1});
    EXPECT_EQ(scaler.step(p.optimizer), !overflows[i]) << "update " << i;
    scaler.update();
    EXPECT_EQ(scaler.scale_value(), expected_after[i]) << "update " << i;
    EXPECT_EQ(scaler.growth_tracker(), tracker_after[i]) << "update " << i;
  }
}

TEST(LossScalerTest, DoesNotGrowPastFloat32) {
  LossScaler scaler(LossScalerOptions().init_scale(std::ldexp(1.0, 127)).growth_interval(1));
  OneParameter p;
  p.set_gradient({1, 1, 1});
  scaler.step(p.optimizer);
  scaler.update();
  EXPECT_EQ(scaler.scale_value(), std::ldexp(1.0, 127));
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

TEST(LossScalerTest, UpdateWithAFoundInfFromElsewhere) {
  LossScaler scaler(LossScalerOptions().init_scale(64));
  OneParameter p;
  p.set_gradient({1, 1, 1});
  scaler.unscale_(p.optimizer);
  EXPECT_FALSE(scaler.found_inf());
  scaler.update(/*found_inf=*/true);
  EXPECT_EQ(scaler.scale_value(), 32.0);
}

TEST(LossScalerTest, MisuseIsAnErrorThatSaysWhat) {
  LossScaler scaler;
  OneParameter p;
  p.set_gradient({1, 1, 1});
  EXPECT_THAT([&] { scaler.update(); }, ThrowsMessage<Error>(HasSubstr("no unscale_")));
  scaler.unscale_(p.optimizer);
  EXPECT_THAT([&] { scaler.unscale_(p.optimizer); },
              ThrowsMessage<Error>(HasSubstr("once per update")));
  EXPECT_THAT([] { LossScaler(LossScalerOptions().init_scale(0)); },
              ThrowsMessage<Error>(HasSubstr("init_scale is 0")));
  EXPECT_THAT([] { LossScaler(LossScalerOptions().growth_factor(1)); },
              ThrowsMessage<Error>(HasSubstr("growth_factor is 1")));
  EXPECT_THAT([] { LossScaler(LossScalerOptions().backoff_factor(1.5)); },
              ThrowsMessage<Error>(HasSubstr("backoff_factor is 1.5")));
  EXPECT_THAT([] { LossScaler(LossScalerOptions().growth_interval(0)); },
              ThrowsMessage<Error>(HasSubstr("growth_interval is 0")));
}

TEST(LossScalerTest, SaveAndLoadKeepScaleAndTracker) {
  LossScaler scaler(LossScalerOptions().init_scale(256).growth_interval(5));
  OneParameter p;
  for (int i = 0; i < 3; ++i) {
    p.set_gradient({1, 1, 1});
    scaler.step(p.optimizer);
    scaler.update();
  }
  p.set_gradient({1, std::numeric_limits<float>::infinity(), 1});
  scaler.step(p.optimizer);
  scaler.update();
  p.set_gradient({1, 1, 1});
  scaler.step(p.optimizer);
  scaler.update();
  torch::serialize::OutputArchive out;
  scaler.save(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  const std::string data = bytes.str();
  in.load_from(data.data(), data.size());
  LossScaler restored(LossScalerOptions().growth_interval(5));
  restored.load(in);
  EXPECT_EQ(restored.scale_value(), 128.0);
  EXPECT_EQ(restored.growth_tracker(), 1);
}

}  // namespace
}  // namespace trainloop
