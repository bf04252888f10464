#pragma once

// Gradient averaging across the ranks of a data-parallel fit, in buckets,
// overlapped with backward. Private to the library.

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "trainloop/distributed.h"

namespace trainloop::detail {

/// Averages the gradients of `parameters` across a process group, as
/// DistributedDataParallel's reducer does: the parameters, in reverse order
/// (about the order backward computes their gradients), are grouped into
/// buckets of one dtype and device of about `bucket_bytes` each. A hook on
/// each parameter copies its gradient into the bucket's flat buffer; when a
/// bucket is complete its all-reduce starts, while backward goes on (buckets
/// start in index order on every rank, so the collectives match). `finish`
/// starts the rest, waits, and writes the averages into `.grad`.
///
/// A few control values travel in the last bucket, summed across ranks, so
/// the loop learns what every rank knows (a pending signal) without a
/// collective of its own.
class GradientReducer {
 public:
  GradientReducer(std::shared_ptr<distributed::ProcessGroup> group,
                  const std::vector<torch::Tensor>& parameters,
                  const distributed::DataParallelOptions& options, int64_t control_size);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  /// Arms the reducer for the next backward, whose gradients are then
  /// averaged. `fresh`: `.grad` holds nothing to keep (the first batch of an
  /// accumulation group, after zero_grad); otherwise what it holds is added.
  /// `control` (of `control_size` values) is summed across ranks with them.
  void prepare(bool fresh, const std::vector<double>& control);
  /// After backward: sends what backward left, waits for every bucket,
  /// writes the averages into each parameter's `.grad`, and returns the
  /// summed control values. Throws `Error` when a collective fails.
  std::vector<double> finish();

  /// Number of buckets (for tests and benchmarks).
  size_t bucket_count() const { return buckets_.size(); }
  /// Buckets of the last reduction whose all-reduce started during backward.
  size_t sent_during_backward() const { return sent_during_backward_; }

 private:
  struct Slot {
    torch::Tensor parameter;
    size_t bucket = 0;
    int64_t offset = 0;
    int64_t numel = 0;
    bool ready = false;
    bool hooked = false;
    unsigned hook = 0;
  };
  struct Bucket {
    torch::Tensor flat;  // the gradients, then (in the last bucket) the control values
    int64_t gradient_numel = 0;
    std::vector<size_t> slots;
    size_t ready = 0;
    bool sent = false;
    distributed::Work work;
  };

  void on_gradient(size_t slot, const torch::Tensor& gradient);
  void fill_from_grad(Slot& slot);
  void send_ready();
  void send(size_t bucket);
  torch::Tensor view(const Slot& slot);

  std::shared_ptr<distributed::ProcessGroup> group_;
  distributed::DataParallelOptions options_;
  int64_t control_size_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  size_t next_to_send_ = 0;
  size_t sent_during_backward_ = 0;
  bool armed_ = false;
  bool fresh_ = true;
};

}  // namespace trainloop::detail
