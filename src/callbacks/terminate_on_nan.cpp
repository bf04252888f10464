#include "trainloop/callbacks/terminate_on_nan.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

constexpr const char* kNanKey = "terminate_on_nan";

// Per batch, the loss (and per update, each gradient's largest absolute
// element) is copied into a slot of a small device buffer: one kernel, no
// wait. Every `check_every_n_batches` batches the buffer comes to the host in
// one read and is scanned there, which also tells which batch and parameter
// went bad first and whether it was nan or inf.
class TerminateOnNan : public Callback {
 public:
  explicit TerminateOnNan(TerminateOnNanOptions options) : options_(std::move(options)) {
    if (options_.check_every_n_batches() < 1) {
      throw Error(fmt::format("{}: check_every_n_batches is {}, expected >= 1", kNanKey,
                              options_.check_every_n_batches()));
    }
  }

  std::string state_key() const override { return kNanKey; }

  void on_event(Event event, TrainingLoop& loop) override {
    const LoopState& state = loop.state();
    switch (event) {
      case Event::training_start:
        clear();
        if (options_.check_gradients()) {
          names_.clear();
          for (const auto& [name, parameter] : loop.model().named_parameters()) {
            names_.push_back(name);
          }
        }
        break;
      case Event::update_start:
        // Gradients the loss scaler found not finite are expected: it skips
        // their update and lowers the scale.
        if (options_.check_gradients() && !state.update_skipped) {
          record_gradients(loop.model(), state);
        }
        break;
      case Event::batch_end:
        if (state.phase != Phase::training) break;
        record_loss(state);
        if (++batches_since_check_ >= options_.check_every_n_batches()) check(state);
        break;
      case Event::training_end:
        check(state);
        break;
      default:
        break;
    }
  }

 private:
  void clear() {
    loss_batches_.clear();
    gradient_batches_.clear();
    batches_since_check_ = 0;
  }

  // (Re)allocates a buffer when it is missing or on another device than the data.
  static void ensure(torch::Tensor& buffer, torch::IntArrayRef shape, const torch::Device& device) {
    if (buffer.defined() && buffer.device() == device && buffer.sizes() == shape) return;
    buffer = torch::empty(shape, torch::TensorOptions().dtype(torch::kDouble).device(device));
  }

  void record_loss(const LoopState& state) {
    if (!state.loss.defined()) return;  // e.g. a batch cancelled before its step
    const auto slot = static_cast<int64_t>(loss_batches_.size());
    if (slot >= options_.check_every_n_batches()) return;
    torch::Tensor loss = state.loss.detach();
    // The loss is a scalar by contract; a sum still carries a nan or inf along.
    if (loss.numel() != 1) loss = loss.sum();
    ensure(loss_buffer_, {options_.check_every_n_batches()}, loss.device());
    loss_buffer_[slot].copy_(loss.reshape({}));
    loss_batches_.push_back(state.batch);
  }

  void record_gradients(const Model& model, const LoopState& state) {
    const auto row = static_cast<int64_t>(gradient_batches_.size());
    if (names_.empty() || row >= options_.check_every_n_batches()) return;
    const auto parameters = model.named_parameters();
    if (parameters.size() != names_.size()) {
      throw Error(fmt::format("{}: the model has {} parameters, {} at training_start", kNanKey,
                              parameters.size(), names_.size()));
    }
    std::optional<torch::Device> device;
    for (const auto& [name, parameter] : parameters) {
      if (parameter.grad().defined()) {
        device = parameter.grad().device();
        break;
      }
    }
    if (!device) return;
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> largest;
    largest.reserve(parameters.size());
    const auto zero = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(*device));
    for (const auto& [name, parameter] : parameters) {
      const torch::Tensor& grad = parameter.grad();
      // max(|g|) is nan if any element is nan, else inf if any is infinite.
      largest.push_back(grad.defined() && grad.numel() > 0
                            ? grad.abs().max().to(*device, torch::kDouble)
                            : zero);
    }
    ensure(gradient_buffer_,
           {options_.check_every_n_batches(), static_cast<int64_t>(names_.size())}, *device);
    gradient_buffer_[row].copy_(torch::stack(largest));
    gradient_batches_.push_back(state.batch);
  }

  static const char* kind(double value) {
    if (std::isnan(value)) return "nan";
    return value > 0 ? "inf" : "-inf";
  }

  void check(const LoopState& state) {
    batches_since_check_ = 0;
    const auto losses = static_cast<int64_t>(loss_batches_.size());
    const auto rows = static_cast<int64_t>(gradient_batches_.size());
    if (losses == 0 && rows == 0) return;
    std::vector<torch::Tensor> parts;
    if (losses > 0) parts.push_back(loss_buffer_.narrow(0, 0, losses).cpu());
    if (rows > 0) parts.push_back(gradient_buffer_.narrow(0, 0, rows).reshape({-1}).cpu());
    // One read for both buffers; cat on the host is needed anyway when they
    // live on different devices.
    const torch::Tensor host = torch::cat(parts).contiguous();
    const double* values = host.data_ptr<double>();
    const auto loss_batches = std::move(loss_batches_);
    const auto gradient_batches = std::move(gradient_batches_);
    clear();

    constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
    int64_t loss_batch = kNone;
    double loss_value = 0;
    for (int64_t i = 0; i < losses; ++i) {
      if (!std::isfinite(values[i])) {
        loss_batch = loss_batches[static_cast<size_t>(i)];
        loss_value = values[i];
        break;
      }
    }
    int64_t gradient_batch = kNone;
    std::string gradient_name;
    double gradient_value = 0;
    const auto columns = static_cast<int64_t>(names_.size());
    for (int64_t i = 0; i < rows * columns && gradient_batch == kNone; ++i) {
      const double value = values[losses + i];
      if (!std::isfinite(value)) {
        gradient_batch = gradient_batches[static_cast<size_t>(i / columns)];
        gradient_name = names_[static_cast<size_t>(i % columns)];
        gradient_value = value;
      }
    }
    // A bad loss makes bad gradients in the same batch; the loss is the cause.
    if (loss_batch != kNone && loss_batch <= gradient_batch) {
      throw Error(fmt::format("{}: loss is {} at epoch {}, batch {}", kNanKey, kind(loss_value),
                              state.epoch + 1, loss_batch + 1));
    }
    if (gradient_batch != kNone) {
      throw Error(fmt::format("{}: gradient of {} is {} at epoch {}, batch {}", kNanKey,
                              gradient_name, kind(gradient_value), state.epoch + 1,
                              gradient_batch + 1));
    }
  }

  TerminateOnNanOptions options_;
  std::vector<std::string> names_;
  torch::Tensor loss_buffer_;
  torch::Tensor gradient_buffer_;
  std::vector<int64_t> loss_batches_;
  std::vector<int64_t> gradient_batches_;
  int64_t batches_since_check_ = 0;
};

}  // namespace

std::shared_ptr<Callback> terminate_on_nan(TerminateOnNanOptions options) {
  return std::make_shared<TerminateOnNan>(std::move(options));
}

}  // namespace trainloop::callbacks
