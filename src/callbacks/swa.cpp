#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "averaged_weights.h"
#include "trainloop/callbacks/weight_averaging.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kSwaName = "swa";

SwaOptions checked_swa_options(SwaOptions options) {
  if (!options.swa_start()) {
    throw Error(fmt::format("{}: swa_start is not set, expected the first epoch to average (>= 0)",
                            kSwaName));
  }
  if (*options.swa_start() < 0) {
    throw Error(fmt::format("{}: swa_start is {}, expected >= 0", kSwaName, *options.swa_start()));
  }
  if (options.swa_lr() && !(*options.swa_lr() > 0)) {
    throw Error(fmt::format("{}: swa_lr is {}, expected > 0", kSwaName, *options.swa_lr()));
  }
  if (options.anneal_epochs() < 0) {
    throw Error(fmt::format("{}: anneal_epochs is {}, expected >= 0", kSwaName,
                            options.anneal_epochs()));
  }
  return options;
}

double anneal_fraction(AnnealStrategy strategy, double t) {
  return strategy == AnnealStrategy::cos ? (1 - std::cos(M_PI * t)) / 2 : t;
}

// SWALR's step `step` from the group's current rate `rate`: it infers the
// rate the annealing started from (undoing the previous step's blend), then
// blends that with swa_lr. Written as SWALR does, so the rates agree to the
// bit and a rate changed by someone else between steps is taken up alike.
double swalr_rate(double rate, double swa_lr, int64_t step, int64_t anneal_epochs,
                  AnnealStrategy strategy) {
  if (anneal_epochs == 0) step = std::max<int64_t>(1, step);
  const auto epochs = static_cast<double>(std::max<int64_t>(1, anneal_epochs));
  const double previous_t = std::clamp(static_cast<double>(step - 1) / epochs, 0.0, 1.0);
  const double previous_alpha = anneal_fraction(strategy, previous_t);
  const double start =
      previous_alpha == 1 ? swa_lr : (rate - previous_alpha * swa_lr) / (1 - previous_alpha);
  const double t = std::clamp(static_cast<double>(step) / epochs, 0.0, 1.0);
  const double alpha = anneal_fraction(strategy, t);
  return swa_lr * alpha + start * (1 - alpha);
}

// Recomputes every batch norm's running statistics as update_bn does.
void recompute_batch_norm(TrainingLoop& loop) {
  Model& model = loop.model();
  std::vector<std::function<void()>> restore;
  auto reset = [&restore](auto* norm) {
    if (norm == nullptr) return false;
    if (!norm->options.track_running_stats()) return true;
    const auto momentum = norm->options.momentum();
    restore.emplace_back([norm, momentum] { norm->options.momentum(momentum); });
    // No momentum: a cumulative average over the pass's batches.
    norm->options.momentum(std::decay_t<decltype(momentum)>());
    norm->reset_running_stats();
    return true;
  };
  for (const auto& module : model.module()->modules()) {
    reset(dynamic_cast<torch::nn::BatchNorm1dImpl*>(module.get())) ||
        reset(dynamic_cast<torch::nn::BatchNorm2dImpl*>(module.get())) ||
        reset(dynamic_cast<torch::nn::BatchNorm3dImpl*>(module.get()));
  }
  const data::DataSource& source = loop.training_data();
  if (restore.empty() || !source) return;
  struct Restore {
    Model model;
    bool training;
    std::vector<std::function<void()>>& momenta;
    ~Restore() {
      for (const auto& undo : momenta) undo();
      model.train(training);
    }
  } restore_at_exit{model, model.is_training(), restore};
  model.train(true);
  torch::NoGradGuard no_grad;
  const torch::Device device = loop.state().device;
  source->start_epoch(0);
  const int64_t batches = source->batch_count();
  for (int64_t i = 0; i < batches; ++i) model.forward(source->batch(i).inputs.to(device));
}

class Swa : public WeightAverage {
 public:
  explicit Swa(SwaOptions options)
      : WeightAverage(kSwaName), options_(checked_swa_options(std::move(options))),
        start_(*options_.swa_start()) {}

  std::string state_key() const override { return kSwaName; }

  void on_event(Event event, TrainingLoop& loop) override {
    const LoopState& state = loop.state();
    switch (event) {
      case Event::fit_start:
        if (options_.update_bn() && !loop.model().module()) {
          throw Error(fmt::format("{}: update_bn needs a torch::nn::Module model to find its batch "
                                  "norms; set update_bn(false) for a TorchScript model",
                                  kSwaName));
        }
        // The first average copies, so the values taken here never count.
        weights().capture(loop.model(), /*with_buffers=*/false);
        break;
      case Event::epoch_start:
        if (state.epoch == start_) set_rate(loop, 0);
        break;
      case Event::training_end:
        // Only whole training passes, as a Python loop averages after each.
        if (state.phase != Phase::training || state.epoch < start_ || state.stopping ||
            state.batch < state.batch_count) {
          break;
        }
        weights().accumulate();
        set_rate(loop, state.epoch - start_ + 1);
        break;
      case Event::fit_end:
        if (weights().count() == 0) break;
        weights().copy_to(loop.model());
        if (options_.update_bn()) recompute_batch_norm(loop);
        break;
      default:
        break;
    }
  }

  // Its checkpoint state is the average's (WeightAverage::save); the rates
  // SWALR set are the loop's (each group's rate), from which its next step
  // starts.

 private:
  // SWALR's step `step`: step 0 at construction, before epoch swa_start,
  // then one at the end of each epoch from swa_start on.
  void set_rate(TrainingLoop& loop, int64_t step) {
    if (!options_.swa_lr()) return;
    for (auto& group : loop.optimizer().param_groups()) {
      group.options().set_lr(swalr_rate(group.options().get_lr(), *options_.swa_lr(), step,
                                        options_.anneal_epochs(), options_.anneal_strategy()));
    }
  }

  SwaOptions options_;
  int64_t start_;
};

}  // namespace

std::shared_ptr<WeightAverage> swa(SwaOptions options) {
  return std::make_shared<Swa>(std::move(options));
}

}  // namespace trainloop::callbacks
