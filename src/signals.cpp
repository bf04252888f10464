#include "signals.h"

#include <atomic>

namespace trainloop::detail {

namespace {

volatile std::sig_atomic_t g_pending = 0;
std::atomic<int> g_depth{0};

// Only async-signal-safe calls here: the second signal restores the default
// action and raises again, so the process ends as if nobody had handled it.
extern "C" void on_signal(int signal_number) {
  if (g_pending != 0) {
    std::signal(signal_number, SIG_DFL);
    std::raise(signal_number);
    return;
  }
  g_pending = signal_number;
}

}  // namespace

SignalGuard::SignalGuard() {
  outermost_ = g_depth.fetch_add(1) == 0;
  if (outermost_) g_pending = 0;
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  // Restart interrupted reads and writes: the fit goes on to a clean stop.
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, &previous_interrupt_);
  sigaction(SIGTERM, &action, &previous_terminate_);
}

SignalGuard::~SignalGuard() {
  sigaction(SIGINT, &previous_interrupt_, nullptr);
  sigaction(SIGTERM, &previous_terminate_, nullptr);
  g_depth.fetch_sub(1);
}

int SignalGuard::pending() { return g_pending; }

}  // namespace trainloop::detail
