// Constructing and configuring a TrainingLoop; running it is in
// training_loop.cpp.
#include "trainloop/training_loop.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>
#include <utility>

#include "distributed/coordinator.h"
#include "step_precision.h"
#include "trainloop/error.h"

namespace trainloop {

TrainingLoop::TrainingLoop(data::DataSource training, data::DataSource validation,
                           torch::optim::Optimizer& optimizer, LossFunction loss,
                           std::vector<std::shared_ptr<Metric>> metrics,
                           std::vector<std::shared_ptr<Callback>> callbacks)
    : training_(std::move(training)),
      validation_(std::move(validation)),
      optimizer_(optimizer),
      loss_(std::move(loss)),
      callbacks_(std::move(callbacks)) {
  if (!training_) throw Error("TrainingLoop: no training data");
  if (!loss_) throw Error("TrainingLoop: the loss function is empty");
  std::set<std::string> names;
  for (size_t i = 0; i < metrics.size(); ++i) {
    if (!metrics[i]) throw Error(fmt::format("TrainingLoop: metric {} is null", i));
    if (!names.insert(metrics[i]->name()).second) {
      throw Error(fmt::format("TrainingLoop: two metrics are named \"{}\"", metrics[i]->name()));
    }
  }
  if (names.count("loss") == 0) metrics.insert(metrics.begin(), metrics::loss());
  for (const auto& metric : metrics) state_.validation_metrics.push_back(metric->clone());
  state_.training_metrics = std::move(metrics);
  for (size_t i = 0; i < callbacks_.size(); ++i) {
    if (!callbacks_[i]) throw Error(fmt::format("TrainingLoop: callback {} is null", i));
  }
  sort_callbacks();
  state_.optimizer = &optimizer_;
  coordinator_ = detail::make_single_process(nullptr);
  precision_ = detail::make_step_precision(MixedPrecisionOptions());
}

void TrainingLoop::sort_callbacks() {
  std::stable_sort(callbacks_.begin(), callbacks_.end(),
                   [](const auto& a, const auto& b) { return a->order() < b->order(); });
}

Model& TrainingLoop::model() {
  if (!model_) throw Error("TrainingLoop::model: no fit, evaluate or predict has started");
  return *model_;
}

TrainingLoop& TrainingLoop::step(Step step) {
  if (!step) throw Error("TrainingLoop::step: the step function is empty");
  step_ = std::move(step);
  return *this;
}

TrainingLoop& TrainingLoop::accumulate_gradients(int64_t batches) {
  if (batches < 1) {
    throw Error(fmt::format("TrainingLoop::accumulate_gradients: {} batches, expected >= 1", batches));
  }
  accumulation_ = batches;
  return *this;
}

TrainingLoop& TrainingLoop::add_callback(std::shared_ptr<Callback> callback) {
  if (!callback) throw Error("TrainingLoop::add_callback: the callback is null");
  callbacks_.push_back(std::move(callback));
  sort_callbacks();
  return *this;
}

TrainingLoop& TrainingLoop::mixed_precision(MixedPrecisionOptions options) {
  precision_ = detail::make_step_precision(options);
  return *this;
}

const LossScaler* TrainingLoop::loss_scaler() const { return precision_->scaler(); }

TrainingLoop& TrainingLoop::handle_signals(bool on) {
  handle_signals_ = on;
  return *this;
}

TrainingLoop& TrainingLoop::data_parallel(std::shared_ptr<distributed::ProcessGroup> group,
                                          distributed::DataParallelOptions options) {
  if (options.bucket_bytes() < 1) {
    throw Error(fmt::format("TrainingLoop::data_parallel: bucket_bytes is {}, expected >= 1",
                            options.bucket_bytes()));
  }
  // Sources split for the old group serve whole again until the next run
  // splits them for the new one.
  coordinator_->make_all_whole();
  coordinator_ = detail::make_coordinator(std::move(group), options);
  return *this;
}

const std::shared_ptr<distributed::ProcessGroup>& TrainingLoop::process_group() const {
  return coordinator_->group();
}

}  // namespace trainloop
