#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>

#include "trainloop/export.h"
#include "trainloop/callback.h"

namespace trainloop::callbacks {

/// Settings for the NaN guard.
/// Example: `TerminateOnNanOptions().check_gradients(true).check_every_n_batches(50)`
struct TerminateOnNanOptions {
  TerminateOnNanOptions() = default;
  /// Also check every parameter's gradient at update_start (default false;
  /// one reduction per parameter per update).
  TORCH_ARG(bool, check_gradients) = false;
  /// Training batches between two reads of the accumulated flags (default 1,
  /// >= 1). Each read waits for the device once; a larger interval keeps the
  /// device busy but lets up to n − 1 more batches (and their updates) run
  /// after the first non-finite value. The message still names the first
  /// one, and the flags are always read at the end of each training pass.
  TORCH_ARG(int64_t, check_every_n_batches) = 1;
};

/// Ends the fit with an `Error` when the training loss (checked at
/// batch_end) or, with `check_gradients`, a gradient is NaN or infinite.
/// The message names the first such value, with 1-based epoch and batch:
///   terminate_on_nan: loss is nan at epoch 2, batch 5
///   terminate_on_nan: gradient of fc1.weight is inf at epoch 1, batch 3
/// The loop wraps it ("callback terminate_on_nan failed at batch_end: …")
/// and still runs fit_end, so other callbacks flush their files. The update
/// of the offending batch has already been applied. State key "terminate_on_nan".
TRAINLOOP_API std::shared_ptr<Callback> terminate_on_nan(TerminateOnNanOptions options = {});

}  // namespace trainloop::callbacks
