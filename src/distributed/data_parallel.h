#pragma once

// What a data-parallel fit does besides averaging gradients: agreeing on
// facts, broadcasting the model, combining metrics. Private to the library.

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/distributed.h"
#include "trainloop/metrics.h"
#include "trainloop/model.h"

namespace trainloop::detail {

/// Throws `Error` on every rank (so none is left waiting) unless each named
/// value is the same on all of them, naming the first that is not, e.g.
/// `data_parallel: training batches in epoch 1 differ between ranks: 7 to 8
/// (rank 1 has 7)`. One collective.
void check_same_on_every_rank(distributed::ProcessGroup& group,
                              const std::vector<std::pair<std::string, int64_t>>& values);

/// Copies rank 0's parameters and buffers into every rank's, in place (one
/// broadcast per dtype and device).
void broadcast_model(distributed::ProcessGroup& group, const Model& model);

/// Throws `Error` naming the first metric that cannot be combined across
/// ranks (see `Metric::all_reduce`), trying it on fresh copies.
void check_reducible(const std::vector<std::shared_ptr<Metric>>& metrics);

/// Combines each metric's state across the ranks (`Metric::all_reduce`).
void reduce_metrics(distributed::ProcessGroup& group,
                    const std::vector<std::shared_ptr<Metric>>& metrics);

}  // namespace trainloop::detail
