#pragma once

// What the callbacks that watch one metric (early stopping, reduce on
// plateau, the best checkpoint) have in common in their options.

namespace trainloop::callbacks {

/// Which direction of a monitored metric is better: `min` for losses,
/// `max` for accuracies. Shared by every callback that watches a metric.
enum class Mode { min, max };

}  // namespace trainloop::callbacks
