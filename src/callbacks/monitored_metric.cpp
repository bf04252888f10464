#include "monitored_metric.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

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

ImprovementTracker::ImprovementTracker(Mode mode, double threshold, bool relative)
    : mode_(mode), threshold_(threshold), relative_(relative) {
  reset();
}

bool ImprovementTracker::is_better(double value) const {
  // PyTorch's ReduceLROnPlateau.is_better term for term, so a run ported
  // from Python judges its epochs alike to the last bit.
  if (mode_ == Mode::min) {
    return relative_ ? value < best_ * (1.0 - threshold_) : value < best_ - threshold_;
  }
  return relative_ ? value > best_ * (threshold_ + 1.0) : value > best_ + threshold_;
}

bool ImprovementTracker::record(double value) {
  if (is_better(value)) {
    best_ = value;
    bad_epochs_ = 0;
    return true;
  }
  ++bad_epochs_;
  return false;
}

void ImprovementTracker::reset() {
  best_ = worst_value(mode_);
  bad_epochs_ = 0;
}

void ImprovementTracker::save(torch::serialize::OutputArchive& archive,
                              const char* bad_epochs_key) const {
  archive.write("best", torch::tensor(best_));
  archive.write(bad_epochs_key, torch::tensor(bad_epochs_));
}

void ImprovementTracker::load(const char* owner, torch::serialize::InputArchive& archive,
                              const char* bad_epochs_key) {
  best_ = read_scalar(owner, archive, "best").item<double>();
  bad_epochs_ = read_scalar(owner, archive, bad_epochs_key).item<int64_t>();
}

MonitoringCallback::MonitoringCallback(const char* key, std::string monitor,
                                       ImprovementTracker tracker)
    : key_(key), monitor_(std::move(monitor)), tracker_(tracker) {
  if (monitor_.empty()) throw Error(fmt::format("{}: monitor is empty", key_));
}

void MonitoringCallback::on_event(Event event, TrainingLoop& loop) {
  switch (event) {
    case Event::fit_start:
      check_monitor(key_, loop, monitor_);
      break;
    case Event::epoch_end:
      // An epoch cut by a fit-level stop (a signal, CancelFit) has no
      // validation value to judge; the fit ends anyway.
      if (!loop.state().stopping) {
        epoch_judged(tracker_.record(monitored_value(key_, loop.state(), monitor_)), loop);
      }
      break;
    case Event::fit_end:
      fit_ended(loop);
      break;
    default:
      break;
  }
}

}  // namespace trainloop::callbacks::detail
