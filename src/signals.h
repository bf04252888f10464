#pragma once

// SIGINT and SIGTERM handling for a running fit. Private to the library.

#include <csignal>

namespace trainloop::detail {

/// While alive, SIGINT and SIGTERM only record that they arrived (a second
/// one ends the process at once, as if unhandled); the handlers that were
/// there before are put back on destruction. Nests.
class SignalGuard {
 public:
  SignalGuard();
  ~SignalGuard();
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

  /// The first signal that arrived since the outermost guard was made, or 0.
  static int pending();

 private:
  struct sigaction previous_interrupt_ {};
  struct sigaction previous_terminate_ {};
  bool outermost_ = false;
};

}  // namespace trainloop::detail
