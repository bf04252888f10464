#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/event.h"
#include "trainloop/output_lock.h"

namespace torch::serialize {
class InputArchive;
class OutputArchive;
}  // namespace torch::serialize

namespace trainloop {

class TrainingLoop;

/// What a `Cancel` ends, narrowest first.
enum class CancelScope { batch, epoch, fit };

/// Common base of the three cancel requests; the loop catches each at its
/// scope. A cancel takes effect once every callback has seen the event it was
/// thrown at (the widest of several wins).
struct TRAINLOOP_API Cancel {
  virtual ~Cancel() = default;
  /// What it ends (a bare `Cancel`: the fit).
  virtual CancelScope scope() const { return CancelScope::fit; }
};
/// Thrown by a callback to skip the rest of the current batch (batch_end still runs).
struct TRAINLOOP_API CancelBatch : Cancel {
  CancelScope scope() const override { return CancelScope::batch; }
};
/// Thrown by a callback to skip the rest of the current epoch (epoch_end still runs).
struct TRAINLOOP_API CancelEpoch : Cancel {
  CancelScope scope() const override { return CancelScope::epoch; }
};
/// Thrown by a callback to end the fit cleanly (fit_end still runs).
struct TRAINLOOP_API CancelFit : Cancel {
  CancelScope scope() const override { return CancelScope::fit; }
};

/// Something that runs at the loop's events. It reads and may change
/// `loop.state()`, and throws a `Cancel` type to stop work.
class TRAINLOOP_API Callback {
 public:
  virtual ~Callback() = default;
  /// Called at every event, in the order the callbacks were given.
  virtual void on_event(Event event, TrainingLoop& loop) = 0;
  /// A stable name: used in error messages and as the key of this
  /// callback's state in a checkpoint, so callbacks whose `save` writes
  /// anything need keys of their own (those that save nothing may share
  /// one). The built-ins with state derive theirs from their options, e.g.
  /// "csv_logger:" and the file, so two of a kind just work. Default: the
  /// demangled type name.
  virtual std::string state_key() const;
  /// Writes the callback's own state into a checkpoint.
  virtual void save(torch::serialize::OutputArchive& /*archive*/) const {}
  /// Reads the state written by `save`. A resumed fit calls it after
  /// fit_start, so state reset at fit_start is restored.
  virtual void load(torch::serialize::InputArchive& /*archive*/) {}
  /// Where the callback runs among the others: in ascending order, those of
  /// equal order as given. Default 0; `callbacks::checkpoint` uses
  /// `kRunLast`, so it saves what every other callback did at the event.
  virtual int order() const { return 0; }
  /// The order of callbacks that must see each event after all others.
  static constexpr int kRunLast = 1000;
  /// Whether, in a data-parallel fit, only the process of rank 0 runs this
  /// callback (default false: every process does). The callbacks that write
  /// files or print — progress, CSV log, TensorBoard, plot — say true, so
  /// one copy of each is written; on the other ranks they see no event and
  /// load no checkpoint state.
  virtual bool rank_zero_only() const { return false; }
  /// The files and directories this callback writes. `fit` holds an
  /// `OutputLock` on each for the whole fit (in a data-parallel fit, rank 0
  /// does), so a second process writing one of them fails at once, naming
  /// it; two callbacks of one fit writing the same output fail at fit_start.
  /// Default: none.
  virtual std::vector<OutputPath> outputs() const { return {}; }
};

/// A callback made of one function, for one-off customization.
class TRAINLOOP_API LambdaCallback : public Callback {
 public:
  using Function = std::function<void(Event, TrainingLoop&)>;
  /// `name` is what error messages call this callback.
  LambdaCallback(Function function, std::string name);
  void on_event(Event event, TrainingLoop& loop) override;
  std::string state_key() const override;

 private:
  Function function_;
  std::string name_;
};

namespace callbacks {
/// Wraps a function of `(Event, TrainingLoop&)` as a callback.
/// Example: `callbacks::lambda([](Event e, TrainingLoop& l) { ... })`
TRAINLOOP_API std::shared_ptr<Callback> lambda(LambdaCallback::Function function,
                                               std::string name = "lambda");
}  // namespace callbacks

}  // namespace trainloop
