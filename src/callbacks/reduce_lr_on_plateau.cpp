#include "trainloop/callbacks/reduce_lr_on_plateau.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <utility>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"
#include "monitored_metric.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kPlateauKey = "reduce_lr_on_plateau";

// Mirrors torch.optim.lr_scheduler.ReduceLROnPlateau step by step, so a run
// ported from Python reduces its rate at the same epochs to the same values.
class ReduceLrOnPlateau : public detail::MonitoringCallback {
 public:
  explicit ReduceLrOnPlateau(ReduceLrOnPlateauOptions options)
      : MonitoringCallback(kPlateauKey, options.monitor(),
                           {options.mode(), options.threshold(),
                            options.threshold_mode() == ThresholdMode::rel}),
        options_(std::move(options)) {
    if (!(options_.factor() >= 0 && options_.factor() < 1)) {
      throw Error(fmt::format("{}: factor is {}, expected in [0, 1)", kPlateauKey, options_.factor()));
    }
    check_at_least_zero("patience", static_cast<double>(options_.patience()));
    check_at_least_zero("cooldown", static_cast<double>(options_.cooldown()));
    check_at_least_zero("threshold", options_.threshold());
    check_at_least_zero("min_lr", options_.min_lr());
    check_at_least_zero("eps", options_.eps());
  }

  void save(torch::serialize::OutputArchive& archive) const override {
    tracker().save(archive, "num_bad_epochs");
    archive.write("cooldown_counter", torch::tensor(cooldown_counter_));
  }

  void load(torch::serialize::InputArchive& archive) override {
    tracker().load(kPlateauKey, archive, "num_bad_epochs");
    cooldown_counter_ = detail::read_scalar(kPlateauKey, archive, "cooldown_counter").item<int64_t>();
  }

 private:
  static void check_at_least_zero(const char* name, double value) {
    if (!(value >= 0)) throw Error(fmt::format("{}: {} is {}, expected >= 0", kPlateauKey, name, value));
  }

  void reset() {
    tracker().reset();
    cooldown_counter_ = 0;
  }

  void fit_ended(TrainingLoop& /*loop*/) override { reset(); }

  // The rest of ReduceLROnPlateau.step, after its is_better.
  void epoch_judged(bool /*improved*/, TrainingLoop& loop) override {
    if (cooldown_counter_ > 0) {
      --cooldown_counter_;
      tracker().clear_bad_epochs();
    }
    if (tracker().bad_epochs() > options_.patience()) {
      reduce(loop.state());
      cooldown_counter_ = options_.cooldown();
      tracker().clear_bad_epochs();
    }
  }

  void reduce(LoopState& state) const {
    if (state.optimizer == nullptr) throw Error(fmt::format("{}: the loop has no optimizer", kPlateauKey));
    for (auto& group : state.optimizer->param_groups()) {
      const double old_rate = group.options().get_lr();
      const double new_rate = std::max(old_rate * options_.factor(), options_.min_lr());
      if (old_rate - new_rate > options_.eps()) group.options().set_lr(new_rate);
    }
  }

  ReduceLrOnPlateauOptions options_;
  int64_t cooldown_counter_ = 0;
};

}  // namespace

std::shared_ptr<Callback> reduce_lr_on_plateau(ReduceLrOnPlateauOptions options) {
  return std::make_shared<ReduceLrOnPlateau>(std::move(options));
}

}  // namespace trainloop::callbacks
