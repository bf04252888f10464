#pragma once

#include <torch/arg.h>
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/callback.h"
#include "trainloop/model.h"

namespace trainloop::callbacks {

namespace detail {
class AveragedWeights;
}  // namespace detail

/// What `ema` and `swa` return: a callback that keeps an average of the
/// model's weights, on the model's device, beside the model. Its accessors
/// let a program (or a test) read or apply the average at any time.
class TRAINLOOP_API WeightAverage : public Callback {
 public:
  ~WeightAverage() override;
  WeightAverage(const WeightAverage&) = delete;
  WeightAverage& operator=(const WeightAverage&) = delete;

  /// The averaged parameters by their dotted names, in the model's order:
  /// the tensors themselves (no copies), so they change as the fit goes on;
  /// clone them to keep a snapshot. Empty before the first fit_start.
  std::vector<std::pair<std::string, torch::Tensor>> averaged_parameters() const;
  /// The buffers the average holds (floating ones averaged, others such as
  /// `num_batches_tracked` copied) by name: empty when it holds none
  /// (`EmaOptions::include_buffers(false)`, and always for `swa`, whose
  /// batch-norm statistics are recomputed instead).
  std::vector<std::pair<std::string, torch::Tensor>> averaged_buffers() const;
  /// How often the average has taken in the model: for `ema` the updates
  /// after the copy at fit_start, for `swa` the epochs averaged (0 before
  /// `swa_start`).
  int64_t updates() const;
  /// Copies the average into `model`'s parameters (and the buffers it holds)
  /// in place. Throws `Error` before the first fit_start, or when `model`'s
  /// parameters differ in names or shapes from those averaged.
  void copy_to(const Model& model) const;
  /// The average and its count, a resumed fit's starting point.
  void save(torch::serialize::OutputArchive& archive) const override;
  void load(torch::serialize::InputArchive& archive) override;

 protected:
  /// `owner` names the callback in error messages, e.g. "ema".
  explicit WeightAverage(std::string owner);
  detail::AveragedWeights& weights() { return *weights_; }
  const detail::AveragedWeights& weights() const { return *weights_; }

 private:
  std::unique_ptr<detail::AveragedWeights> weights_;
};

/// Settings for `ema`.
/// Example: `EmaOptions().decay(0.999).warmup(true)`
struct EmaOptions {
  EmaOptions() = default;
  /// The weight of the old average at each update, in [0, 1] (default 0.9999).
  TORCH_ARG(double, decay) = 0.9999;
  /// Use `min(decay, (1 + t) / (10 + t))` at the update after `t` earlier
  /// ones (t = 0 at the first), TensorFlow's `ExponentialMovingAverage`
  /// rule with `num_updates` = t, so the early average follows the model
  /// more closely (default false).
  TORCH_ARG(bool, warmup) = false;
  /// Update the average at every n-th optimizer update, those where
  /// `global_step % n == 0` (>= 1, default 1).
  TORCH_ARG(int64_t, every_n_steps) = 1;
  /// Average the model's floating-point buffers (batch-norm statistics)
  /// too, and copy the others, as timm's `ModelEmaV2` (default true). Off:
  /// the parameters only, and validation uses the model's own buffers.
  TORCH_ARG(bool, include_buffers) = true;
  /// Validate, `evaluate` and `predict` with the average (default true): it
  /// is swapped into the model at validation_start of every phase but
  /// training and swapped back at validation_end, so validation metrics,
  /// early stopping and the best checkpoint see the average, while
  /// training and every checkpoint see the raw weights. (Before a first fit
  /// there is no average, and the model's weights are used.)
  TORCH_ARG(bool, validate_with_average) = true;
  /// At fit_end, copy the average into the model, so the weights after
  /// `fit` (and `save_weights`) are the average (default false).
  TORCH_ARG(bool, apply_at_end) = false;
};

/// An exponential moving average of the model's weights. At fit_start (a
/// fresh fit) the average is a copy of the model; after each optimizer
/// update (training batch_end where `global_step` advanced and
/// `LoopState::update_skipped` is false) `average = decay * average + (1 -
/// decay) * weight`, on the device, without waiting for it. The average and
/// its update count are its checkpoint state, so a resumed fit continues
/// bit for bit; its key is "ema:" and the options that change the average,
/// e.g. "ema:decay=0.999,warmup". Throws `Error` naming a bad option.
/// Example: `auto average = callbacks::ema(EmaOptions().decay(0.999));` then,
/// after `fit`, `average->copy_to(model)`.
TRAINLOOP_API std::shared_ptr<WeightAverage> ema(EmaOptions options = {});

/// How `swa` anneals the learning rate to `swa_lr`, as SWALR's
/// `anneal_strategy`.
enum class AnnealStrategy {
  cos,     ///< alpha(t) = (1 - cos(pi t)) / 2
  linear,  ///< alpha(t) = t
};

/// Settings for `swa`.
/// Example: `SwaOptions(75).swa_lr(0.05).anneal_epochs(5)`
struct SwaOptions {
  SwaOptions() = default;
  /// Averages from epoch `swa_start` on.
  explicit SwaOptions(int64_t swa_start) : swa_start_(swa_start) {}
  /// The first epoch (0-based) whose end is averaged (required, >= 0).
  TORCH_ARG(std::optional<int64_t>, swa_start) = std::nullopt;
  /// The learning rate the SWA epochs anneal to (> 0); unset (default):
  /// the learning rate is left alone, e.g. to a schedule of one's own.
  TORCH_ARG(std::optional<double>, swa_lr) = std::nullopt;
  /// Epochs over which the rate anneals to `swa_lr` (>= 0, default 10).
  TORCH_ARG(int64_t, anneal_epochs) = 10;
  /// Cosine (default) or linear annealing.
  TORCH_ARG(AnnealStrategy, anneal_strategy) = AnnealStrategy::cos;
  /// At fit_end, after copying the average into the model, recompute the
  /// batch-norm statistics with one pass over the training data, as
  /// `torch.optim.swa_utils.update_bn` (default true).
  TORCH_ARG(bool, update_bn) = true;
};

/// Stochastic weight averaging with `torch.optim.swa_utils` semantics: an
/// equal average of the weights at the end of each training epoch from
/// `swa_start` on (`AveragedModel`: the first copies, then `average +=
/// (weight - average) / (n + 1)`); a training pass cut short is not
/// averaged. With `swa_lr`, the learning rate of every parameter group
/// follows `SWALR`: its step k (the rate of epoch swa_start + k) is taken
/// at epoch_start of `swa_start` (k = 0: unchanged, but `swa_lr` at once
/// when `anneal_epochs` is 0) and at the end of each training pass from
/// `swa_start` on, with SWALR's formula on the group's current rate, so
/// the rate anneals from its value at `swa_start` to `swa_lr` over
/// `anneal_epochs` epochs, then stays; a schedule that sets the rate every
/// batch (`lr_scheduler`) would overrule it. At fit_end, when the average
/// has taken anything in, it is copied into the model and (`update_bn`)
/// every `torch::nn::BatchNorm1d/2d/3d` gets its running statistics reset
/// and recomputed as a cumulative average over one pass of the training
/// data (`start_epoch(0)`, every batch, `model(inputs)` in training mode
/// without gradients on the fit's device; momenta and the model's mode are
/// restored). In a data-parallel fit each rank averages its own identical
/// weights but recomputes the statistics over its shard. The average and
/// its count are its checkpoint state (key "swa"); the rates it set are in
/// the loop's. Throws `Error` naming a bad
/// option; with a TorchScript model and `update_bn`, at fit_start.
/// Example: `callbacks::swa(SwaOptions(75).swa_lr(0.05))`
TRAINLOOP_API std::shared_ptr<WeightAverage> swa(SwaOptions options);

}  // namespace trainloop::callbacks
