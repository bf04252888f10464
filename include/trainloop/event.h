#pragma once

#include <string>

#include "trainloop/export.h"

namespace trainloop {

/// The points of the loop at which callbacks run, in the order of a fit:
/// fit_start, then per epoch epoch_start, training_start, per batch
/// batch_start, inference_prediction_end, update_start (training only),
/// batch_end, then training_end, the same for validation, epoch_end, and
/// finally fit_end.
enum class Event {
  fit_start,
  fit_end,
  epoch_start,
  epoch_end,
  training_start,
  training_end,
  validation_start,
  validation_end,
  batch_start,
  batch_end,
  update_start,
  inference_prediction_end,
};

/// The event's name as written in code, e.g. "batch_end".
TRAINLOOP_API const char* to_string(Event event);

}  // namespace trainloop
