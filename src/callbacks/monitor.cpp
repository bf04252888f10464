#include "monitor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "trainloop/error.h"

namespace trainloop::callbacks::detail {

double worst_value(Mode mode) {
  return mode == Mode::min ? std::numeric_limits<double>::infinity()
                           : -std::numeric_limits<double>::infinity();
}

void check_monitor(const char* owner, const TrainingLoop& loop, const std::string& monitor) {
  const auto names = loop.state().metric_names();
  if (std::find(names.begin(), names.end(), monitor) == names.end()) {
    throw Error(fmt::format("{}: no metric named \"{}\"; known: {}", owner, monitor,
                            fmt::join(names, ", ")));
  }
  if (monitor.rfind("val_", 0) == 0 && !loop.validation_data()) {
    throw Error(fmt::format("{}: monitor \"{}\" needs validation data, and this loop has none; "
                            "give the TrainingLoop validation data or monitor \"{}\"",
                            owner, monitor, monitor.substr(4)));
  }
}

double monitored_value(const char* owner, const LoopState& state, const std::string& monitor) {
  const double value = state.metric(monitor);
  // A NaN almost always means the metric was never computed, which deserves
  // a message rather than a silent bad epoch (PyTorch would count one).
  if (std::isnan(value)) {
    throw Error(fmt::format(
        "{}: monitor \"{}\" is nan at epoch {}; expected a number (was it computed? "
        "\"val_\" metrics need validation data)",
        owner, monitor, state.epoch + 1));
  }
  return value;
}

torch::Tensor read_scalar(const char* owner, torch::serialize::InputArchive& archive,
                          const char* key) {
  torch::Tensor value;
  if (!archive.try_read(key, value) || value.numel() != 1) {
    throw Error(fmt::format("{}: state has no scalar \"{}\"", owner, key));
  }
  return value;
}

}  // namespace trainloop::callbacks::detail
