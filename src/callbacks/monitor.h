#pragma once

// What callbacks that watch one metric share (early stopping, reduce on
// plateau). Private to the library.

#include <torch/torch.h>

#include <string>

#include "trainloop/callbacks/early_stopping.h"
#include "trainloop/loop_state.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks::detail {

/// The starting "best" value: +inf when smaller is better, -inf otherwise.
double worst_value(Mode mode);

/// Throws `Error` naming `owner` unless `monitor` is one of the loop's metric
/// names and, for a "val_" one, the loop has validation data: so a typo
/// fails at fit_start rather than after the first epoch.
void check_monitor(const char* owner, const TrainingLoop& loop, const std::string& monitor);

/// The monitored metric's value now; `Error` naming `owner` when it is NaN.
double monitored_value(const char* owner, const LoopState& state, const std::string& monitor);

/// A one-element tensor stored under `key` by `save`; `Error` naming `owner`
/// when it is missing.
torch::Tensor read_scalar(const char* owner, torch::serialize::InputArchive& archive,
                          const char* key);

}  // namespace trainloop::callbacks::detail
