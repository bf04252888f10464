#include "trainloop/callbacks/gradient_clipping.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {
namespace {

using callbacks::GradientClippingOptions;
using testing::HasSubstr;
using testing::ThrowsMessage;

constexpr double kInf = std::numeric_limits<double>::infinity();

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(3, 5));
    fc2 = register_module("fc2", torch::nn::Linear(5, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(fc1(x).tanh()); }
  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};
};
TORCH_MODULE(Net);

using Reference = std::function<void(std::vector<torch::Tensor>&)>;

// Runs a short fit with `clipping` and, at every update, checks the clipped
// gradients against `reference` applied to copies of the unclipped ones.
// Returns how many updates had their gradients changed by the clipping.
int run_and_compare(std::shared_ptr<Callback> clipping, const Reference& reference) {
  torch::manual_seed(11);
  Net model;
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.001));
  // Large targets give large gradients, so clipping has work to do.
  data::TensorDataset train(torch::randn({12, 3}), 50 * torch::randn({12, 2}));
  std::vector<torch::Tensor> expected;
  int changed = 0;
  auto before = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event != Event::update_start) return;
    expected.clear();
    for (const auto& p : loop.model().parameters()) {
      auto copy = torch::zeros_like(p).requires_grad_();
      copy.mutable_grad() = p.grad().clone();
      expected.push_back(copy);
    }
  });
  auto after = callbacks::lambda([&](Event event, TrainingLoop& loop) {
    if (event != Event::update_start) return;
    const auto parameters = loop.model().parameters();
    bool differs = false;
    for (size_t i = 0; i < parameters.size(); ++i) {
      differs = differs || !torch::equal(parameters[i].grad(), expected[i].grad());
    }
    changed += differs ? 1 : 0;
    reference(expected);
    ASSERT_EQ(parameters.size(), expected.size());
    for (size_t i = 0; i < parameters.size(); ++i) {
      EXPECT_TRUE(torch::allclose(parameters[i].grad(), expected[i].grad(), 1e-6, 1e-7))
          << "parameter " << i << " at step " << loop.state().global_step;
    }
  });
  TrainingLoop loop(data::Epochs(train, 4).seed(2), nullptr, optimizer, losses::mse, {},
                    {before, std::move(clipping), after});
  loop.fit(model, 2);
  return changed;
}

TEST(GradientClippingTest, NormMatchesLibTorch) {
  for (const double norm_type : {2.0, 1.0, 3.0, kInf}) {
    SCOPED_TRACE(norm_type);
    const int changed = run_and_compare(
        callbacks::gradient_clipping(GradientClippingOptions().max_norm(0.5).norm_type(norm_type)),
        [&](std::vector<torch::Tensor>& parameters) {
          torch::nn::utils::clip_grad_norm_(parameters, 0.5, norm_type);
        });
    EXPECT_EQ(changed, 6);  // every update of the 2 × 3 batches was clipped
  }
}

TEST(GradientClippingTest, SmallNormIsLeftAlone) {
  const int changed = run_and_compare(
      callbacks::gradient_clipping(GradientClippingOptions().max_norm(1e9)),
      [](std::vector<torch::Tensor>&) {});
  EXPECT_EQ(changed, 0);
}

TEST(GradientClippingTest, ValueMatchesLibTorch) {
  const int changed = run_and_compare(
      callbacks::gradient_clipping(GradientClippingOptions().clip_value(0.25)),
      [](std::vector<torch::Tensor>& parameters) {
        torch::nn::utils::clip_grad_value_(parameters, 0.25);
      });
  EXPECT_EQ(changed, 6);
}

TEST(GradientClippingTest, RejectsBadOptions) {
  using callbacks::gradient_clipping;
  EXPECT_THAT([] { gradient_clipping(GradientClippingOptions()); },
              ThrowsMessage<Error>(HasSubstr("neither max_norm nor clip_value is set; expected "
                                             "exactly one of max_norm and clip_value")));
  EXPECT_THAT([] { gradient_clipping(GradientClippingOptions().max_norm(1).clip_value(1)); },
              ThrowsMessage<Error>(HasSubstr("both max_norm and clip_value are set")));
  EXPECT_THAT([] { gradient_clipping(GradientClippingOptions().max_norm(0)); },
              ThrowsMessage<Error>(HasSubstr("max_norm is 0, expected > 0")));
  EXPECT_THAT([] { gradient_clipping(GradientClippingOptions().clip_value(-1)); },
              ThrowsMessage<Error>(HasSubstr("clip_value is -1, expected > 0")));
  EXPECT_THAT([] { gradient_clipping(GradientClippingOptions().max_norm(1).norm_type(-2)); },
              ThrowsMessage<Error>(HasSubstr("norm_type is -2, expected >= 0 or infinity")));
  EXPECT_EQ(gradient_clipping(GradientClippingOptions().max_norm(1))->state_key(),
            "gradient_clipping");
}

}  // namespace
}  // namespace trainloop
