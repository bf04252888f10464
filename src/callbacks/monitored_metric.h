#pragma once

// What callbacks that watch one metric share (early stopping, reduce on
// plateau, the best checkpoint). Private to the library.

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "trainloop/callback.h"
#include "trainloop/callbacks/monitor.h"
#include "trainloop/loop_state.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks::detail {

/// The starting "best" value: +inf when smaller is better, -inf otherwise.
double worst_value(Mode mode);

/// Throws `Error` naming `owner` unless `monitor` is one of the loop's metric
/// names and, for a "val_" one, the loop has validation data: so a typo
/// fails at fit_start rather than after the first epoch.
void check_monitor(const char* owner, const TrainingLoop& loop, const std::string& monitor);

/// The monitored metric's value now; `Error` naming `owner` when it is NaN.
double monitored_value(const char* owner, const LoopState& state, const std::string& monitor);

/// A one-element tensor stored under `key` by `save`; `Error` naming `owner`
/// when it is missing.
torch::Tensor read_scalar(const char* owner, torch::serialize::InputArchive& archive,
                          const char* key);

/// The best value of a monitored metric so far and the epochs since it last
/// improved, as Keras' EarlyStopping and PyTorch's ReduceLROnPlateau count
/// them. Better means beyond the best by more than `threshold`: in the
/// metric's units (`value < best - threshold` in `min` mode), or with
/// `relative` as a fraction of the best (`value < best × (1 − threshold)`);
/// the mirror images in `max` mode.
class ImprovementTracker {
 public:
  ImprovementTracker(Mode mode, double threshold, bool relative);

  /// Records one epoch's value: the new best (and no bad epochs) when it is
  /// better, else one more bad epoch. Returns whether it was better.
  bool record(double value);
  /// Epochs in a row whose value was not better (since `clear_bad_epochs`).
  int64_t bad_epochs() const { return bad_epochs_; }
  /// Starts counting bad epochs afresh; the best value stays.
  void clear_bad_epochs() { bad_epochs_ = 0; }
  /// Back to no value seen: the worst best value and no bad epochs.
  void reset();

  /// Writes the best value under "best" and the bad epochs under `bad_epochs_key`.
  void save(torch::serialize::OutputArchive& archive, const char* bad_epochs_key) const;
  /// Reads what `save` wrote; `Error` naming `owner` when a key is missing.
  void load(const char* owner, torch::serialize::InputArchive& archive,
            const char* bad_epochs_key);

 private:
  bool is_better(double value) const;

  Mode mode_;
  double threshold_;
  bool relative_;
  double best_ = 0;
  int64_t bad_epochs_ = 0;
};

/// A callback that judges one monitored metric at each epoch end (early
/// stopping, reduce on plateau): it checks the monitor at fit_start, records
/// the metric's value in `tracker()` at each epoch end and hands the verdict
/// to `epoch_judged`, and calls `fit_ended` at fit_end.
class MonitoringCallback : public Callback {
 public:
  /// The kind and the monitor, e.g. "early_stopping:val_loss", so two
  /// watching different metrics keep their states apart.
  std::string state_key() const override { return std::string(key_) + ":" + monitor_; }
  void on_event(Event event, TrainingLoop& loop) override;

 protected:
  /// `key`: the state key and the name errors start with. `Error` when
  /// `monitor` is empty.
  MonitoringCallback(const char* key, std::string monitor, ImprovementTracker tracker);

  /// At an epoch end, after `tracker().record`: `improved`, whether the
  /// value was better than the best before it.
  virtual void epoch_judged(bool improved, TrainingLoop& loop) = 0;
  /// At fit_end, however the fit ends (also after an error or a cancel).
  virtual void fit_ended(TrainingLoop& loop) = 0;

  const char* key() const { return key_; }
  ImprovementTracker& tracker() { return tracker_; }
  const ImprovementTracker& tracker() const { return tracker_; }

 private:
  const char* key_;
  std::string monitor_;
  ImprovementTracker tracker_;
};

}  // namespace trainloop::callbacks::detail
