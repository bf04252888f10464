#pragma once

#include <torch/arg.h>

#include <cstdio>
#include <memory>
#include <optional>

#include "trainloop/export.h"
#include "trainloop/callback.h"

namespace trainloop::callbacks {

/// Settings for the progress display.
/// Example: `ProgressOptions().stream(stderr).refresh_seconds(0.25)`
struct ProgressOptions {
  /// A C stream; an alias because TORCH_ARG's `const T&` needs one for pointers.
  using Stream = std::FILE*;
  ProgressOptions() = default;
  /// Where the display is written.
  TORCH_ARG(Stream, stream) = stdout;
  /// Force the terminal mode on or off; by default it is on when `stream`
  /// is a terminal (isatty).
  TORCH_ARG(std::optional<bool>, terminal) = std::nullopt;
  /// Least time between two redraws of the line on a terminal, in seconds.
  TORCH_ARG(double, refresh_seconds) = 0.1;
  /// Width of the bar in characters.
  TORCH_ARG(int, bar_width) = 30;
  /// Off a terminal, seconds between flushes of the stream at epoch ends, as
  /// `CsvLoggerOptions::flush_seconds`: the first epoch's line is flushed at
  /// once, later ones once this much time has passed (else at the first
  /// batch end after that); 0: every line at once. On a terminal every line
  /// is flushed at once. Default 1.
  TORCH_ARG(double, flush_seconds) = 1.0;
};

/// The animated progress display. On a terminal, one line per epoch redrawn
/// in place at most every `refresh_seconds`:
///   epoch 2/10 [=========>          ] 156/469 loss 0.5012 accuracy 0.8213 | 5120 samples/s | 00:09 < 00:18
/// and, when the epoch ends, the finished line with training and validation
/// metrics. Elsewhere (files, pipes, CI logs) only the finished line, one per
/// epoch, with no control characters.
TRAINLOOP_API std::shared_ptr<Callback> progress(ProgressOptions options = {});

}  // namespace trainloop::callbacks
