#pragma once

// What the training loop checks before and during a run, and how it says
// where a failure happened. Private to the library.

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "trainloop/callback.h"
#include "trainloop/loop_state.h"
#include "trainloop/model.h"
#include "trainloop/output_lock.h"

namespace trainloop::detail {

/// A tensor's dtype and shape, e.g. "Float [2, 4]"; "none" when undefined.
std::string shape_text(const torch::Tensor& tensor);

/// Where the loop is, e.g. "training, epoch 2/10, batch 5/100".
std::string position(const LoopState& state);

/// Throws `Error` when class targets (one integer per row) fall outside the
/// outputs' width: the loss would fail deep inside LibTorch, or on a GPU end
/// the process with a device-side assert. Reads the device: once per fit.
void check_class_targets(const LoopState& state);

/// Throws `Error` when the optimizer has parameters and none is the
/// model's: the fit would train nothing and still report success.
void check_optimizer_parameters(torch::optim::Optimizer& optimizer, const Model& model);

/// Takes an `OutputLock` on every output the callbacks declare
/// (`Callback::outputs`); throws `Error` naming both callbacks when two
/// write one output.
std::vector<OutputLock> lock_outputs(const std::vector<std::shared_ptr<Callback>>& callbacks);

}  // namespace trainloop::detail
