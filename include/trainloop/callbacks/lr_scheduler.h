#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <optional>

#include "trainloop/export.h"
#include "trainloop/callback.h"
#include "trainloop/schedule.h"

namespace trainloop::callbacks {

/// Settings for `lr_scheduler`: the schedule, and how it is stepped.
/// Example: `LrSchedulerOptions(schedules::one_cycle(0.01)).per_epoch(true)`
struct LrSchedulerOptions {
  LrSchedulerOptions() = default;
  /// Rates from `schedule`.
  /* implicit */ LrSchedulerOptions(Schedule schedule) : schedule_(std::move(schedule)) {}
  /// The schedule (required).
  TORCH_ARG(std::optional<Schedule>, schedule) = std::nullopt;
  /// Change the rate once per epoch, at epoch_start, with step = epoch index
  /// and total = epoch count (so segment step counts count epochs), instead of
  /// before every update (default).
  TORCH_ARG(bool, per_epoch) = false;
  /// The schedule's total step count. By default the fit's number of
  /// updates: epoch count × ceil(training batches / gradient accumulation),
  /// read at training_start.
  TORCH_ARG(std::optional<int64_t>, total_steps) = std::nullopt;
};

/// Sets the learning rate of every parameter group of the optimizer (any
/// torch::optim optimizer) from `schedule`, before each update: at each
/// training batch_start (and at training_start) it uses
/// `schedule.rate(state.global_step, total)`, so `state.learning_rate()` at
/// update_start is the rate of that update. When the schedule carries a
/// momentum schedule (e.g. `schedules::one_cycle`), it also sets SGD's
/// momentum or Adam's/AdamW's beta1; with another optimizer fit_start throws
/// `Error` naming its type. The schedule depends only on (global_step,
/// total), so there is no state to checkpoint. State key "lr_scheduler".
/// Example: `callbacks::lr_scheduler(schedules::warmup_linear(2e-5, 10))`, or
/// `callbacks::lr_scheduler(LrSchedulerOptions(schedules::step_decay(0.1, 10)).per_epoch(true))`.
/// Throws `Error` when the options hold no schedule.
TRAINLOOP_API std::shared_ptr<Callback> lr_scheduler(LrSchedulerOptions options);
/// The same, the schedule given apart (the form of earlier versions).
TRAINLOOP_API std::shared_ptr<Callback> lr_scheduler(Schedule schedule, LrSchedulerOptions options);

}  // namespace trainloop::callbacks
