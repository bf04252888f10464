#include "step_precision.h"

#include <optional>
#include <utility>

namespace trainloop::detail {

namespace {

// Autocast around forward and loss only (backward runs in the types
// forward chose, as torch.autocast's documentation prescribes), and a loss
// scaler when the options ask for one.
class MixedPrecision : public Precision {
 public:
  explicit MixedPrecision(const MixedPrecisionOptions& options) : dtype_(options.dtype()) {
    if (options.scales_loss()) {
      scaler_.emplace(options.loss_scaling().value_or(LossScalerOptions()));
    }
  }

  void start(const torch::Device& device) override {
    // Fails here, naming what is missing, rather than at the first batch.
    if (dtype_ != torch::kFloat) const AutocastGuard check(device.type(), dtype_);
    device_ = device.type();
  }

  void forward(const std::function<void()>& step) override {
    // float32 with loss scaling leaves autocast as the caller set it.
    if (dtype_ == torch::kFloat) {
      step();
      return;
    }
    const AutocastGuard autocast(device_, dtype_);
    step();
  }

  void backward(const torch::Tensor& loss) override {
    if (scaler_) {
      scaler_->scale(loss).backward();
    } else {
      loss.backward();
    }
  }

  bool unscale(torch::optim::Optimizer& optimizer) override {
    if (!scaler_) return false;
    scaler_->unscale_(optimizer);
    return scaler_->found_inf();
  }

  void update(torch::optim::Optimizer& optimizer, bool skip) override {
    if (!skip) optimizer.step();
    if (scaler_) scaler_->update(skip);
  }

  const LossScaler* scaler() const override { return scaler_ ? &*scaler_ : nullptr; }

  void save(torch::serialize::OutputArchive& archive) const override {
    if (scaler_) scaler_->save(archive);
  }

  void load(torch::serialize::InputArchive& archive) override {
    if (scaler_) scaler_->load(archive);
  }

 private:
  torch::Dtype dtype_;
  torch::DeviceType device_ = torch::kCPU;
  std::optional<LossScaler> scaler_;
};

}  // namespace

std::shared_ptr<Precision> make_step_precision(const MixedPrecisionOptions& options) {
  if (options.dtype() == torch::kFloat && !options.scales_loss()) {
    return std::make_shared<Precision>();
  }
  return std::make_shared<MixedPrecision>(options);
}

}  // namespace trainloop::detail
