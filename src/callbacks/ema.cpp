#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "averaged_weights.h"
#include "trainloop/callbacks/weight_averaging.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kEmaName = "ema";

EmaOptions checked_ema_options(EmaOptions options) {
  if (!(options.decay() >= 0 && options.decay() <= 1)) {
    throw Error(fmt::format("{}: decay is {}, expected 0 <= decay <= 1", kEmaName, options.decay()));
  }
  if (options.every_n_steps() < 1) {
    throw Error(fmt::format("{}: every_n_steps is {}, expected >= 1", kEmaName,
                            options.every_n_steps()));
  }
  return options;
}

// Two averages of one fit are distinct when these options differ, so the
// key carries them.
std::string ema_key(const EmaOptions& options) {
  std::string key = fmt::format("{}:decay={}", kEmaName, options.decay());
  if (options.warmup()) key += ",warmup";
  if (options.every_n_steps() != 1) key += fmt::format(",every_n_steps={}", options.every_n_steps());
  if (!options.include_buffers()) key += ",parameters_only";
  return key;
}

class Ema : public WeightAverage {
 public:
  explicit Ema(EmaOptions options)
      : WeightAverage(kEmaName), options_(checked_ema_options(std::move(options))),
        key_(ema_key(options_)) {}

  std::string state_key() const override { return key_; }

  void on_event(Event event, TrainingLoop& loop) override {
    const LoopState& state = loop.state();
    switch (event) {
      case Event::fit_start:
        // A resumed fit's average comes from load(), after this.
        weights().capture(loop.model(), options_.include_buffers());
        last_step_ = state.global_step;
        break;
      case Event::batch_end:
        if (state.phase != Phase::training || state.global_step == last_step_) break;
        last_step_ = state.global_step;
        if (state.update_skipped || state.global_step % options_.every_n_steps() != 0) break;
        weights().blend(decay());
        break;
      case Event::validation_start:
        if (options_.validate_with_average() && state.phase != Phase::training &&
            weights().captured()) {
          weights().swap_in(loop.model());
        }
        break;
      case Event::validation_end:
        // Before the checkpoint callback (it runs last), so checkpoints hold
        // the raw weights training goes on from.
        weights().swap_out();
        break;
      case Event::fit_end:
        weights().swap_out();  // a validation that failed
        if (options_.apply_at_end()) weights().copy_to(loop.model());
        break;
      default:
        break;
    }
  }

 private:
  double decay() const {
    if (!options_.warmup()) return options_.decay();
    const auto t = static_cast<double>(weights().count());
    return std::min(options_.decay(), (1.0 + t) / (10.0 + t));
  }

  EmaOptions options_;
  std::string key_;
  // The global_step of the last update seen, so each update counts once.
  int64_t last_step_ = 0;
};

}  // namespace

std::shared_ptr<WeightAverage> ema(EmaOptions options) {
  return std::make_shared<Ema>(std::move(options));
}

}  // namespace trainloop::callbacks
