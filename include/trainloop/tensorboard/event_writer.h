#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "trainloop/export.h"

namespace trainloop::tensorboard {

/// Writes one TensorBoard event file: TFRecord-framed `Event` protocol
/// buffers (encoded here, without a protobuf library), readable by
/// TensorBoard and by `tensorboard.backend.event_processing`.
///
/// The file is buffered and reaches the disk at `flush()`, `close()`, or when
/// the buffer fills. Each record is handed to the C library in one piece, so
/// a killed process leaves complete records plus at most one partial record
/// at the end, which readers skip. Errors (a directory that cannot be made, a
/// full disk) throw `trainloop::Error` naming the file.
///
/// Example:
///   tensorboard::EventWriter writer("run/tensorboard/train");
///   writer.add_scalar("loss", 0.25, /*step=*/100);
///   writer.flush();
class TRAINLOOP_API EventWriter {
 public:
  /// Number of equal-width buckets of a histogram between its least and
  /// greatest value.
  static constexpr int kHistogramBuckets = 30;

  /// Creates `directory` (with its parents) when missing and opens a new
  /// event file in it, named
  /// `events.out.tfevents.<unix seconds>.<hostname>.<pid>.<counter>` (the
  /// counter keeps files opened in the same second apart), or `file_name`
  /// when one is given. Writes the first record, `file_version`
  /// "brain.Event:2", and flushes it.
  explicit EventWriter(const std::string& directory, const std::string& file_name = "");
  /// Closes the file; errors are ignored here (call `close()` to see them).
  ~EventWriter();
  /// Continues the existing event file `path` after cutting it back to its
  /// first `length` bytes (a length `flushed_length()` returned), so records
  /// written after that point are dropped. Throws `Error` naming the file
  /// when it is missing or shorter than `length`.
  static std::unique_ptr<EventWriter> resume(const std::string& path, int64_t length);
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  /// Path of the event file.
  const std::string& path() const { return path_; }
  /// False after `close()`.
  bool is_open() const { return file_ != nullptr; }

  /// Adds a scalar (a `simple_value`, stored as a 32-bit float) at `step`.
  /// `wall_time` is in seconds since the Unix epoch; default: now.
  void add_scalar(const std::string& tag, double value, int64_t step,
                  std::optional<double> wall_time = std::nullopt);
  /// Adds a histogram of all elements of `values` (any shape, dtype or
  /// device; copied to the CPU, so a device sync): min, max, count, sum, sum
  /// of squares and `kHistogramBuckets` equal-width buckets. Non-finite
  /// elements are left out. TensorBoard shows it under Histograms and
  /// Distributions.
  void add_histogram(const std::string& tag, const torch::Tensor& values, int64_t step,
                     std::optional<double> wall_time = std::nullopt);
  /// Adds a text summary (TensorBoard's Text tab renders it as Markdown).
  void add_text(const std::string& tag, const std::string& text, int64_t step,
                std::optional<double> wall_time = std::nullopt);

  /// Writes buffered records to the file.
  void flush();
  /// Flushes, syncs the file to the disk, and returns its length in bytes.
  int64_t flushed_length();
  /// Flushes and closes the file; later calls do nothing.
  void close();

  /// Seconds since the Unix epoch, with sub-second resolution.
  static double now();

 private:
  EventWriter() = default;
  void write_event(const std::string& event);
  void check_open() const;

  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace trainloop::tensorboard
