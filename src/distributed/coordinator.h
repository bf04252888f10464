#pragma once

// How the processes of a run work together on each step: one process alone,
// or the ranks of a data-parallel fit. The loop calls a Coordinator at fixed
// points of a run and of a batch, and nothing else in the loop knows how many
// processes there are. Private to the library.

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainloop/data/epochs.h"
#include "trainloop/distributed.h"
#include "trainloop/metrics.h"
#include "trainloop/model.h"

namespace trainloop::detail {

/// The seam between the training loop and its processes. A batch that
/// updates the model goes: step, metrics, `before_backward`, backward,
/// `after_backward` (gradients complete), update.
class Coordinator {
 public:
  virtual ~Coordinator() = default;

  /// The group `TrainingLoop::data_parallel` was given (null: none).
  virtual const std::shared_ptr<distributed::ProcessGroup>& group() const = 0;
  /// This process's rank, and how many processes run (0 and 1 alone).
  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;

  /// Serves this process its share of `source` from its next epoch on;
  /// `pad`: as many batches on every rank (training). Alone: nothing to do.
  virtual void distribute(const data::DataSource& source, bool pad) = 0;
  /// Makes `source` whole again, if `distribute` split it.
  virtual void make_whole(const data::DataSource& source) = 0;
  /// Makes every source `distribute` split whole again.
  virtual void make_all_whole() = 0;

  /// Throws `Error` naming the first training metric that this coordinator
  /// cannot combine across processes. Before anything is locked or loaded.
  virtual void check_metrics(const std::vector<std::shared_ptr<Metric>>& metrics) = 0;
  /// Before fit_start, after a resume restored `model`: makes every process
  /// start alike. `resumed_step` and `resumed_batch` are -1 for a fresh fit.
  virtual void start_fit(const Model& model, int64_t resumed_step, int64_t resumed_batch) = 0;
  /// After a fit, however it ended.
  virtual void end_fit() = 0;
  /// At the start of epoch `epoch`'s training pass of `batches` batches.
  virtual void start_training_pass(int64_t epoch, int64_t batches) = 0;

  /// Before the backward that an update follows. `fresh`: `.grad` holds
  /// nothing to keep (the group's first batch); `signal`: this process's
  /// pending SIGINT or SIGTERM, or 0, for every process to learn.
  virtual void before_backward(bool fresh, int signal) = 0;
  /// After that backward, before the update: makes the gradients complete
  /// (over every process).
  virtual void after_backward() = 0;
  /// After an update, the signal every process acts on, given this
  /// process's pending one: all stop after the same update.
  virtual int signal_after_update(int signal) = 0;
  /// At an epoch's end, the same (a signal that came while validating).
  virtual int signal_at_epoch_end(int signal) = 0;
  /// At a phase's end: each metric's state over every process.
  virtual void combine_metrics(const std::vector<std::shared_ptr<Metric>>& metrics) = 0;

  /// Every process's `mine`, in rank order (a checkpoint's per-rank state).
  virtual std::vector<std::string> gather(const std::string& mine) = 0;
  /// Whether `flag` is true on any process; every process waits here.
  virtual bool any(bool flag) = 0;
};

/// One process alone: every call does nothing or returns what it was given.
std::unique_ptr<Coordinator> make_single_process(std::shared_ptr<distributed::ProcessGroup> group);

/// The ranks of `group` (of more than one process): data-parallel as
/// `TrainingLoop::data_parallel` describes.
std::unique_ptr<Coordinator> make_data_parallel(std::shared_ptr<distributed::ProcessGroup> group,
                                                const distributed::DataParallelOptions& options);

/// The coordinator for `group`: data-parallel for a group of several
/// processes, else one process.
std::unique_ptr<Coordinator> make_coordinator(std::shared_ptr<distributed::ProcessGroup> group,
                                              const distributed::DataParallelOptions& options);

}  // namespace trainloop::detail
