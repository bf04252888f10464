#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>

#include "trainloop/export.h"
#include "trainloop/data/batch.h"
#include "trainloop/data/batch_source.h"

namespace trainloop::data {

/// Settings for `prefetch`.
/// Example: `PrefetchOptions().depth(4)`
struct PrefetchOptions {
  PrefetchOptions() = default;
  /// Batches prepared ahead of the one in use, at most (>= 1).
  TORCH_ARG(int64_t, depth) = 2;
};

/// A `BatchSource` that prepares the next batches of `source` on one
/// background thread while the loop computes, for sources that read or
/// transform on the fly. Batches arrive in order and equal the source's.
///
/// `start_epoch` stops the thread of the previous epoch (also one abandoned
/// half-way, as after `CancelEpoch`), calls `source.start_epoch` on the
/// calling thread, and starts a thread that calls `source.batch(0)`,
/// `source.batch(1)`, … in turn, keeping at most `depth` finished batches
/// queued. Asking for a batch other than the next one restarts the thread at
/// that batch. An exception thrown by `source.batch(i)` reaches the caller of
/// `batch(i)` unchanged (same type, same message), after the batches before
/// it; asking for batch i again retries it. Destruction stops and joins the
/// thread, waiting for a `source.batch` call in progress to return. Only the
/// background thread calls `source.batch` while an epoch runs, so the source
/// needs no locking. `shard` and `shuffles` are the source's: `shard`
/// stops the thread, drops the batches it prepared, and shards the source,
/// whose next `start_epoch` draws the shard's order; so a prefetched source
/// trains data-parallel as the source itself does. Throws `Error` for a
/// depth < 1, a null source, or a batch out of range or before `start_epoch`.
/// Example: `TrainingLoop loop(data::prefetch(TorchDataset(images, 64)), …)`
TRAINLOOP_API std::shared_ptr<BatchSource> prefetch(DataSource source,
                                                    PrefetchOptions options = {});

}  // namespace trainloop::data
