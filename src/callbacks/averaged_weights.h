#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/model.h"

namespace trainloop::callbacks::detail {

/// The average of a model's weights that `ema` and `swa` keep: one tensor
/// per parameter (and buffer, when asked), on the model's device, updated
/// with `_foreach` kernels so an update never waits for the device.
/// Floating-point tensors are averaged, the others (`num_batches_tracked`)
/// copied.
class AveragedWeights {
 public:
  /// `owner` names the callback in error messages ("ema", "swa").
  explicit AveragedWeights(std::string owner) : owner_(std::move(owner)) {}

  /// Takes `model`'s parameters (and buffers, `with_buffers`) as the ones
  /// to average, and sets the average to a copy of them and the count to 0.
  /// Swaps back first if a run that failed left the average swapped in.
  void capture(const Model& model, bool with_buffers);
  bool captured() const { return captured_; }

  /// average = decay * average + (1 - decay) * weight; count + 1.
  void blend(double decay);
  /// The first call copies, later ones average += (weight - average) /
  /// (count + 1), AveragedModel's equal average; count + 1.
  void accumulate();
  /// Averages taken in since `capture`.
  int64_t count() const { return count_; }

  /// Copies the average into `model` (checked against the captured names
  /// and shapes).
  void copy_to(const Model& model) const;
  /// Puts the average into `model`, keeping its own weights aside, until
  /// `swap_out`; a no-op when not swapped in.
  void swap_in(const Model& model);
  void swap_out();

  /// The averaged (name, tensor) pairs: parameters or buffers.
  std::vector<std::pair<std::string, torch::Tensor>> named(bool parameters) const;

  void save(torch::serialize::OutputArchive& archive) const;
  /// Throws `Error` naming the owner when the checkpoint's average does not
  /// fit the captured model.
  void load(torch::serialize::InputArchive& archive);

 private:
  /// `model`'s tensors in the captured order, checked by name and shape.
  std::vector<torch::Tensor> tensors_of(const Model& model) const;

  std::string owner_;
  bool captured_ = false;
  bool with_buffers_ = false;
  std::vector<std::string> names_;
  std::vector<bool> is_parameter_;
  std::vector<torch::Tensor> average_;
  // The captured model's tensors and the average, split for the kernels:
  // floating ones averaged, the rest copied.
  std::vector<torch::Tensor> model_floating_, average_floating_;
  std::vector<torch::Tensor> model_other_, average_other_;
  int64_t count_ = 0;
  // While swapped in: the model's tensors and their own values.
  std::vector<torch::Tensor> swapped_, backup_;
};

}  // namespace trainloop::callbacks::detail
