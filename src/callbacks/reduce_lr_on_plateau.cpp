#include "trainloop/callbacks/reduce_lr_on_plateau.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <utility>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"
#include "monitor.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kKey = "reduce_lr_on_plateau";

// Mirrors torch.optim.lr_scheduler.ReduceLROnPlateau step by step, so a run
// ported from Python reduces its rate at the same epochs to the same values.
class ReduceLrOnPlateau : public Callback {
 public:
  explicit ReduceLrOnPlateau(ReduceLrOnPlateauOptions options) : options_(std::move(options)) {
    if (options_.monitor().empty()) throw Error(fmt::format("{}: monitor is empty", kKey));
    if (!(options_.factor() >= 0 && options_.factor() < 1)) {
      throw Error(fmt::format("{}: factor is {}, expected in [0, 1)", kKey, options_.factor()));
    }
    check_at_least_zero("patience", static_cast<double>(options_.patience()));
    check_at_least_zero("cooldown", static_cast<double>(options_.cooldown()));
    check_at_least_zero("threshold", options_.threshold());
    check_at_least_zero("min_lr", options_.min_lr());
    check_at_least_zero("eps", options_.eps());
    reset();
  }

  std::string state_key() const override { return kKey; }

  void on_event(Event event, TrainingLoop& loop) override {
    switch (event) {
      case Event::fit_start:
        detail::check_monitor(kKey, loop, options_.monitor());
        break;
      case Event::epoch_end:
        // An epoch cut by a fit-level stop (a signal, CancelFit) has no
        // validation value to judge.
        if (!loop.state().stopping) step(loop.state());
        break;
      case Event::fit_end:
        reset();
        break;
      default:
        break;
    }
  }

  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("best", torch::tensor(best_));
    archive.write("num_bad_epochs", torch::tensor(num_bad_epochs_));
    archive.write("cooldown_counter", torch::tensor(cooldown_counter_));
  }

  void load(torch::serialize::InputArchive& archive) override {
    best_ = detail::read_scalar(kKey, archive, "best").item<double>();
    num_bad_epochs_ = detail::read_scalar(kKey, archive, "num_bad_epochs").item<int64_t>();
    cooldown_counter_ = detail::read_scalar(kKey, archive, "cooldown_counter").item<int64_t>();
  }

 private:
  static void check_at_least_zero(const char* name, double value) {
    if (!(value >= 0)) throw Error(fmt::format("{}: {} is {}, expected >= 0", kKey, name, value));
  }


  void reset() {
    best_ = detail::worst_value(options_.mode());
    num_bad_epochs_ = 0;
    cooldown_counter_ = 0;
  }


  bool is_better(double value) const {
    const double threshold = options_.threshold();
    const bool rel = options_.threshold_mode() == ThresholdMode::rel;
    if (options_.mode() == Mode::min) {
      return rel ? value < best_ * (1.0 - threshold) : value < best_ - threshold;
    }
    return rel ? value > best_ * (threshold + 1.0) : value > best_ + threshold;
  }

  void step(LoopState& state) {
    const double value = detail::monitored_value(kKey, state, options_.monitor());
    if (is_better(value)) {
      best_ = value;
      num_bad_epochs_ = 0;
    } else {
      ++num_bad_epochs_;
    }
    if (cooldown_counter_ > 0) {
      --cooldown_counter_;
      num_bad_epochs_ = 0;
    }
    if (num_bad_epochs_ > options_.patience()) {
      reduce(state);
      cooldown_counter_ = options_.cooldown();
      num_bad_epochs_ = 0;
    }
  }

  void reduce(LoopState& state) const {
    if (state.optimizer == nullptr) throw Error(fmt::format("{}: the loop has no optimizer", kKey));
    for (auto& group : state.optimizer->param_groups()) {
      const double old_rate = group.options().get_lr();
      const double new_rate = std::max(old_rate * options_.factor(), options_.min_lr());
      if (old_rate - new_rate > options_.eps()) group.options().set_lr(new_rate);
    }
  }

  ReduceLrOnPlateauOptions options_;
  double best_ = 0;
  int64_t num_bad_epochs_ = 0;
  int64_t cooldown_counter_ = 0;
};

}  // namespace

std::shared_ptr<Callback> reduce_lr_on_plateau(ReduceLrOnPlateauOptions options) {
  return std::make_shared<ReduceLrOnPlateau>(std::move(options));
}

}  // namespace trainloop::callbacks
