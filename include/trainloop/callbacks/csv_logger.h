#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "trainloop/export.h"
#include "trainloop/callback.h"

namespace trainloop::callbacks {

/// Settings for the CSV log.
/// Example: `CsvLoggerOptions("run/log.csv").every_n_batches(10)`
struct CsvLoggerOptions {
  /* implicit */ CsvLoggerOptions(std::string path) : path_(std::move(path)) {}
  /* implicit */ CsvLoggerOptions(const char* path) : path_(path) {}
  /// The CSV file; missing parent directories are created at fit start.
  TORCH_ARG(std::string, path);
  /// One row per phase (at training_end and validation_end) instead of one
  /// per batch. Default false.
  TORCH_ARG(bool, per_epoch) = false;
  /// In per-batch mode, write only every n-th batch of each phase, plus the
  /// phase's last batch: each row reads the metrics (a device sync). Default 1.
  TORCH_ARG(int64_t, every_n_batches) = 1;
  /// Continue an existing non-empty file (its header must equal this log's)
  /// instead of truncating it. Default true.
  TORCH_ARG(bool, append) = true;
  /// Seconds between flushes at epoch ends: the first epoch end of a fit
  /// flushes, a later one only once this much time has passed since the last
  /// flush (else the first batch end after that does). 0 flushes at every
  /// epoch end. Checkpoints, interrupts and the fit's end always flush.
  /// Default 1.
  TORCH_ARG(double, flush_seconds) = 1.0;
};

/// Writes metrics to a CSV file, for plotting. The header is
///   epoch,batch,phase,step,lr,loss,accuracy
/// (the loop's training metric names, in loop order), then one row per
/// training and per validation batch, e.g.
///   1,3,train,3,0.1,1.0986122886681098,0.3333333333333333
///   1,2,validation,3,0.1,1.0512,0.5
/// `epoch` and `batch` count from 1; `phase` is `train` or `validation`;
/// `step` is the global step after the batch; `lr` the learning rate of the
/// optimizer's first parameter group (empty without one). Metric values are
/// those accumulated since the phase started; validation rows hold the
/// validation values under the same columns. In per-epoch mode, `batch` is
/// the number of batches the phase ran. Numbers round-trip (shortest exact
/// form; `nan`, `inf`, `-inf`) independently of the locale; fields are quoted
/// as RFC 4180 says. The file is opened at fit start, flushed at epoch ends
/// (at most once per `flush_seconds`, and at checkpoints) and closed at fit end (also after a cancel or an error); a second fit
/// with the same logger appends. `evaluate` and `predict` write nothing.
/// Throws `Error` naming the file when it cannot be created, written or
/// flushed, or when an existing file's header differs.
TRAINLOOP_API std::shared_ptr<Callback> csv_logger(CsvLoggerOptions options);

}  // namespace trainloop::callbacks
