#pragma once

// When a log callback flushes its file at epoch ends. A flush is a system
// call, which costs more than a whole epoch of a small model; so the first
// epoch end of a fit flushes (an unwritable file fails early), later ones only
// once `interval` seconds have passed since the last flush, and an epoch end
// that had to wait leaves a flush owed, paid at the first batch end once the
// interval is over. A log is then at most about `interval` behind the epoch
// ends; checkpoints, interrupts and the fit's end flush on their own.

#include <fmt/format.h>

#include <chrono>

#include "trainloop/error.h"

namespace trainloop::callbacks::detail {

/// Throws `Error` unless `seconds` (a callback's flush_seconds) is >= 0.
inline void check_flush_seconds(const char* callback, double seconds) {
  if (!(seconds >= 0)) {
    throw Error(fmt::format("{}: flush_seconds is {}, expected >= 0", callback, seconds));
  }
}

class FlushTimer {
 public:
  explicit FlushTimer(double interval_seconds) : interval_(interval_seconds) {}

  /// At fit start: the next epoch end flushes.
  void restart() {
    flushed_once_ = false;
    owed_ = false;
  }
  /// At an epoch end: whether to flush now.
  bool at_epoch_end() {
    if (!flushed_once_ || interval_.count() <= 0 || interval_over()) return flushed();
    owed_ = true;
    return false;
  }
  /// At a batch end: whether an owed flush is due now. Costs a branch while
  /// none is owed.
  bool at_batch_end() { return owed_ && interval_over() && flushed(); }

 private:
  using Clock = std::chrono::steady_clock;
  bool interval_over() const { return Clock::now() - last_ >= interval_; }
  bool flushed() {
    flushed_once_ = true;
    owed_ = false;
    last_ = Clock::now();
    return true;
  }

  std::chrono::duration<double> interval_;
  Clock::time_point last_{};
  bool flushed_once_ = false;
  bool owed_ = false;
};

}  // namespace trainloop::callbacks::detail
