#include "trainloop/event.h"

namespace trainloop {

const char* to_string(Event event) {
  switch (event) {
    case Event::fit_start: return "fit_start";
    case Event::fit_end: return "fit_end";
    case Event::epoch_start: return "epoch_start";
    case Event::epoch_end: return "epoch_end";
    case Event::training_start: return "training_start";
    case Event::training_end: return "training_end";
    case Event::validation_start: return "validation_start";
    case Event::validation_end: return "validation_end";
    case Event::batch_start: return "batch_start";
    case Event::batch_end: return "batch_end";
    case Event::update_start: return "update_start";
    case Event::inference_prediction_end: return "inference_prediction_end";
  }
  return "unknown_event";
}

}  // namespace trainloop
