#include "trainloop/callbacks/early_stopping.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"
#include "monitored_metric.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kEarlyStoppingKey = "early_stopping";

// The bad epochs that the tracker counts are Keras' "wait".
class EarlyStopping : public detail::MonitoringCallback {
 public:
  explicit EarlyStopping(EarlyStoppingOptions options)
      : MonitoringCallback(kEarlyStoppingKey, options.monitor(),
                           {options.mode(), options.min_delta(), /*relative=*/false}),
        options_(std::move(options)) {
    if (options_.patience() < 0) {
      throw Error(fmt::format("early_stopping: patience is {}, expected >= 0", options_.patience()));
    }
    if (!(options_.min_delta() >= 0)) {
      throw Error(fmt::format("early_stopping: min_delta is {}, expected >= 0",
                              options_.min_delta()));
    }
  }

  void save(torch::serialize::OutputArchive& archive) const override {
    tracker().save(archive, "wait");
    archive.write("best_epoch", torch::tensor(best_epoch_));
    archive.write("best_weight_count", torch::tensor(static_cast<int64_t>(best_weights_.size())));
    for (size_t i = 0; i < best_weights_.size(); ++i) {
      archive.write(fmt::format("best_weight_{}", i), best_weights_[i], /*is_buffer=*/true);
    }
  }

  void load(torch::serialize::InputArchive& archive) override {
    tracker().load(kEarlyStoppingKey, archive, "wait");
    best_epoch_ = detail::read_scalar(kEarlyStoppingKey, archive, "best_epoch").item<int64_t>();
    const auto count = detail::read_scalar(kEarlyStoppingKey, archive, "best_weight_count").item<int64_t>();
    best_weights_.clear();
    for (int64_t i = 0; i < count; ++i) {
      torch::Tensor weight;
      archive.read(fmt::format("best_weight_{}", i), weight, /*is_buffer=*/true);
      best_weights_.push_back(weight);
    }
  }

 private:
  void epoch_judged(bool improved, TrainingLoop& loop) override {
    if (improved) {
      best_epoch_ = loop.state().epoch;
      if (options_.restore_best()) snapshot(loop.model());
      return;
    }
    if (tracker().bad_epochs() >= options_.patience()) throw CancelFit();
  }

  void fit_ended(TrainingLoop& loop) override {
    // Also after an error or a cancel: the best epoch's weights are the
    // most useful thing left in the model then.
    restore(loop);
    reset();
  }

  void reset() {
    tracker().reset();
    best_epoch_ = -1;
    best_weights_.clear();
  }

  static std::vector<torch::Tensor> weights_of(const Model& model) {
    std::vector<torch::Tensor> weights;
    for (const auto& [name, tensor] : model.named_parameters()) weights.push_back(tensor);
    for (const auto& [name, tensor] : model.named_buffers()) weights.push_back(tensor);
    return weights;
  }

  // Copies stay on the model's device: a copy to the host would wait for it.
  void snapshot(const Model& model) {
    torch::NoGradGuard no_grad;
    best_weights_.clear();
    for (const auto& weight : weights_of(model)) {
      best_weights_.push_back(weight.defined() ? weight.detach().clone() : weight);
    }
  }

  void restore(TrainingLoop& loop) {
    if (!options_.restore_best() || best_weights_.empty()) return;
    const auto weights = weights_of(loop.model());
    if (weights.size() != best_weights_.size()) {
      throw Error(fmt::format("{}: the model has {} parameters and buffers, the best epoch's "
                              "copy has {}; expected the same model",
                              kEarlyStoppingKey, weights.size(), best_weights_.size()));
    }
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (weights[i].defined() && best_weights_[i].defined()) weights[i].copy_(best_weights_[i]);
    }
  }

  EarlyStoppingOptions options_;
  int64_t best_epoch_ = -1;
  std::vector<torch::Tensor> best_weights_;
};

}  // namespace

std::shared_ptr<Callback> early_stopping(EarlyStoppingOptions options) {
  return std::make_shared<EarlyStopping>(std::move(options));
}

}  // namespace trainloop::callbacks
