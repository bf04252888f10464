#include "trainloop/callbacks/lr_scheduler.h"

#include <c10/util/Type.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <typeinfo>
#include <utility>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

// Where an optimizer keeps the momentum that one-cycle moves: SGD's
// momentum, or beta1 of Adam and AdamW.
enum class MomentumSlot { sgd, adam, adamw, none };

MomentumSlot momentum_slot(torch::optim::OptimizerOptions& options) {
  if (dynamic_cast<torch::optim::SGDOptions*>(&options) != nullptr) return MomentumSlot::sgd;
  if (dynamic_cast<torch::optim::AdamOptions*>(&options) != nullptr) return MomentumSlot::adam;
  if (dynamic_cast<torch::optim::AdamWOptions*>(&options) != nullptr) return MomentumSlot::adamw;
  return MomentumSlot::none;
}

void set_momentum(torch::optim::OptimizerOptions& options, double momentum) {
  // static_cast is safe: fit_start checked every group's options type.
  switch (momentum_slot(options)) {
    case MomentumSlot::sgd:
      static_cast<torch::optim::SGDOptions&>(options).momentum(momentum);
      break;
    case MomentumSlot::adam: {
      auto& adam = static_cast<torch::optim::AdamOptions&>(options);
      adam.betas(std::make_tuple(momentum, std::get<1>(adam.betas())));
      break;
    }
    case MomentumSlot::adamw: {
      auto& adamw = static_cast<torch::optim::AdamWOptions&>(options);
      adamw.betas(std::make_tuple(momentum, std::get<1>(adamw.betas())));
      break;
    }
    case MomentumSlot::none:
      break;
  }
}

class LrScheduler : public Callback {
 public:
  LrScheduler(Schedule schedule, LrSchedulerOptions options)
      : schedule_(std::move(schedule)), options_(std::move(options)) {
    if (options_.total_steps() && *options_.total_steps() < 0) {
      throw Error(fmt::format("callbacks::lr_scheduler: total_steps {}, expected >= 0",
                              *options_.total_steps()));
    }
  }

  void on_event(Event event, TrainingLoop& loop) override {
    LoopState& state = loop.state();
    switch (event) {
      case Event::fit_start:
        check_momentum(loop.optimizer());
        if (options_.per_epoch() && state.epoch_count > 0) {
          // Check the counts now rather than one epoch in.
          schedule_.rate(0, options_.total_steps().value_or(state.epoch_count));
        }
        break;
      case Event::epoch_start:
        if (options_.per_epoch()) {
          apply(loop.optimizer(), state.epoch,
                options_.total_steps().value_or(state.epoch_count));
        }
        break;
      case Event::training_start:
        if (!options_.per_epoch()) {
          // Updates per epoch: a short last accumulation group still updates.
          const int64_t accumulation = loop.gradient_accumulation();
          const int64_t updates = (state.batch_count + accumulation - 1) / accumulation;
          total_ = options_.total_steps().value_or(state.epoch_count * updates);
          // A pass resumed after batch b (b > 0) gets the rate its batch b-1
          // trained with, which the original fit still had here (a resume
          // after the last batch validates with it); each batch_start sets the
          // next one. Batch b-1 counted its update if it ended a group.
          int64_t step = state.global_step;
          if (state.batch > 0 &&
              (state.batch % accumulation == 0 || state.batch == state.batch_count)) {
            step = std::max<int64_t>(0, step - 1);
          }
          apply(loop.optimizer(), step, total_);
        }
        break;
      case Event::batch_start:
        if (!options_.per_epoch() && state.phase == Phase::training) {
          apply(loop.optimizer(), state.global_step, total_);
        }
        break;
      default:
        break;
    }
  }

  std::string state_key() const override { return "lr_scheduler"; }

 private:
  void check_momentum(torch::optim::Optimizer& optimizer) const {
    if (!schedule_.has_momentum()) return;
    for (auto& group : optimizer.param_groups()) {
      if (momentum_slot(group.options()) == MomentumSlot::none) {
        throw Error(fmt::format(
            "lr_scheduler: the schedule cycles momentum, which needs SGD, Adam or AdamW; "
            "the optimizer is {}",
            c10::demangle(typeid(optimizer).name())));
      }
    }
  }

  void apply(torch::optim::Optimizer& optimizer, int64_t step, int64_t total) const {
    const double rate = schedule_.rate(step, total);
    const bool momentum = schedule_.has_momentum();
    const double value = momentum ? schedule_.momentum(step, total) : 0.0;
    for (auto& group : optimizer.param_groups()) {
      group.options().set_lr(rate);
      if (momentum) set_momentum(group.options(), value);
    }
  }

  Schedule schedule_;
  LrSchedulerOptions options_;
  int64_t total_ = 0;
};

}  // namespace

std::shared_ptr<Callback> lr_scheduler(LrSchedulerOptions options) {
  if (!options.schedule()) throw Error("lr_scheduler: the options hold no schedule");
  Schedule schedule = *options.schedule();
  return std::make_shared<LrScheduler>(std::move(schedule), std::move(options));
}

std::shared_ptr<Callback> lr_scheduler(Schedule schedule, LrSchedulerOptions options) {
  return lr_scheduler(std::move(options.schedule(std::move(schedule))));
}

}  // namespace trainloop::callbacks
