#include "trainloop/callbacks/weight_averaging.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "../error_text.h"
#include "averaged_weights.h"
#include "monitored_metric.h"
#include "trainloop/error.h"

namespace trainloop::callbacks {

namespace detail {

namespace {

std::string shape_of(const torch::Tensor& tensor) { return trainloop::detail::sizes_text(tensor.sizes()); }

}  // namespace

void AveragedWeights::capture(const Model& model, bool with_buffers) {
  swap_out();
  torch::NoGradGuard no_grad;
  with_buffers_ = with_buffers;
  names_.clear();
  is_parameter_.clear();
  average_.clear();
  model_floating_.clear();
  average_floating_.clear();
  model_other_.clear();
  average_other_.clear();
  auto take = [&](const std::vector<std::pair<std::string, torch::Tensor>>& named, bool parameter) {
    for (const auto& [name, tensor] : named) {
      if (!tensor.defined()) continue;
      names_.push_back(name);
      is_parameter_.push_back(parameter);
      const torch::Tensor copy = tensor.detach().clone();
      average_.push_back(copy);
      const bool floating = tensor.is_floating_point();
      (floating ? model_floating_ : model_other_).push_back(tensor.detach());
      (floating ? average_floating_ : average_other_).push_back(copy);
    }
  };
  take(model.named_parameters(), true);
  if (with_buffers) take(model.named_buffers(), false);
  count_ = 0;
  captured_ = true;
}

void AveragedWeights::blend(double decay) {
  torch::NoGradGuard no_grad;
  if (!average_floating_.empty()) {
    torch::_foreach_mul_(average_floating_, decay);
    torch::_foreach_add_(average_floating_, model_floating_, 1.0 - decay);
  }
  for (size_t i = 0; i < average_other_.size(); ++i) average_other_[i].copy_(model_other_[i]);
  ++count_;
}

void AveragedWeights::accumulate() {
  torch::NoGradGuard no_grad;
  if (count_ == 0) {
    for (size_t i = 0; i < average_floating_.size(); ++i) average_floating_[i].copy_(model_floating_[i]);
  } else if (!average_floating_.empty()) {
    // AveragedModel's order of operations, so results match it to the bit
    // where the kernels do.
    std::vector<torch::Tensor> step = torch::_foreach_sub(model_floating_, average_floating_);
    torch::_foreach_div_(step, static_cast<double>(count_ + 1));
    torch::_foreach_add_(average_floating_, step);
  }
  for (size_t i = 0; i < average_other_.size(); ++i) average_other_[i].copy_(model_other_[i]);
  ++count_;
}

std::vector<torch::Tensor> AveragedWeights::tensors_of(const Model& model) const {
  if (!captured_) {
    throw Error(fmt::format("{}: no average yet (it is taken at fit_start)", owner_));
  }
  std::vector<std::pair<std::string, torch::Tensor>> named = model.named_parameters();
  if (with_buffers_) {
    for (auto& buffer : model.named_buffers()) {
      if (buffer.second.defined()) named.push_back(std::move(buffer));
    }
  }
  if (named.size() != names_.size()) {
    throw Error(fmt::format("{}: the model has {} parameters{}, the average {}", owner_, named.size(),
                            with_buffers_ ? " and buffers" : "", names_.size()));
  }
  std::vector<torch::Tensor> tensors;
  tensors.reserve(named.size());
  for (size_t i = 0; i < named.size(); ++i) {
    const auto& [name, tensor] = named[i];
    if (name != names_[i] || !tensor.sizes().equals(average_[i].sizes())) {
      throw Error(fmt::format("{}: the model's {} {} differs from the average's {} {}", owner_, name,
                              shape_of(tensor), names_[i], shape_of(average_[i])));
    }
    tensors.push_back(tensor.detach());
  }
  return tensors;
}

void AveragedWeights::copy_to(const Model& model) const {
  const std::vector<torch::Tensor> targets = tensors_of(model);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < targets.size(); ++i) targets[i].copy_(average_[i]);
}

void AveragedWeights::swap_in(const Model& model) {
  swap_out();
  std::vector<torch::Tensor> targets = tensors_of(model);
  torch::NoGradGuard no_grad;
  // The copy aside is kept between swaps: validation allocates nothing
  // after the first.
  if (backup_.size() != targets.size()) backup_.assign(targets.size(), torch::Tensor());
  for (size_t i = 0; i < targets.size(); ++i) {
    if (!backup_[i].defined() || !backup_[i].is_same_size(targets[i]) ||
        backup_[i].dtype() != targets[i].dtype() || backup_[i].device() != targets[i].device()) {
      backup_[i] = torch::empty_like(targets[i]);
    }
    backup_[i].copy_(targets[i]);
    targets[i].copy_(average_[i]);
  }
  swapped_ = std::move(targets);
}

void AveragedWeights::swap_out() {
  if (swapped_.empty()) return;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < swapped_.size(); ++i) swapped_[i].copy_(backup_[i]);
  swapped_.clear();
}

std::vector<std::pair<std::string, torch::Tensor>> AveragedWeights::named(bool parameters) const {
  std::vector<std::pair<std::string, torch::Tensor>> result;
  for (size_t i = 0; i < names_.size(); ++i) {
    if (is_parameter_[i] == parameters) result.emplace_back(names_[i], average_[i]);
  }
  return result;
}

void AveragedWeights::save(torch::serialize::OutputArchive& archive) const {
  archive.write("count", torch::tensor(count_));
  archive.write("tensor_count", torch::tensor(static_cast<int64_t>(average_.size())));
  for (size_t i = 0; i < average_.size(); ++i) {
    archive.write(fmt::format("name_{}", i), c10::IValue(names_[i]));
    archive.write(fmt::format("tensor_{}", i), average_[i], /*is_buffer=*/true);
  }
}

void AveragedWeights::load(torch::serialize::InputArchive& archive) {
  const char* owner = owner_.c_str();
  const int64_t count = read_scalar(owner, archive, "count").item<int64_t>();
  const int64_t tensors = read_scalar(owner, archive, "tensor_count").item<int64_t>();
  if (tensors != static_cast<int64_t>(average_.size())) {
    throw Error(fmt::format("{}: the checkpoint's average has {} tensors, the model {}", owner_,
                            tensors, average_.size()));
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < average_.size(); ++i) {
    c10::IValue name;
    torch::Tensor saved;
    if (!archive.try_read(fmt::format("name_{}", i), name) || !name.isString() ||
        !archive.try_read(fmt::format("tensor_{}", i), saved, /*is_buffer=*/true)) {
      throw Error(fmt::format("{}: the checkpoint's average lacks tensor {}", owner_, i));
    }
    if (name.toStringRef() != names_[i] || !saved.sizes().equals(average_[i].sizes())) {
      throw Error(fmt::format("{}: the checkpoint's average holds {} {} where the model has {} {}",
                              owner_, name.toStringRef(), shape_of(saved), names_[i],
                              shape_of(average_[i])));
    }
    // Into the tensors the kernels update, on the model's device.
    average_[i].copy_(saved);
  }
  count_ = count;
}

}  // namespace detail

WeightAverage::WeightAverage(std::string owner)
    : weights_(std::make_unique<detail::AveragedWeights>(std::move(owner))) {}
WeightAverage::~WeightAverage() = default;

std::vector<std::pair<std::string, torch::Tensor>> WeightAverage::averaged_parameters() const {
  return weights_->named(true);
}

std::vector<std::pair<std::string, torch::Tensor>> WeightAverage::averaged_buffers() const {
  return weights_->named(false);
}

int64_t WeightAverage::updates() const { return weights_->count(); }

void WeightAverage::copy_to(const Model& model) const { weights_->copy_to(model); }

void WeightAverage::save(torch::serialize::OutputArchive& archive) const { weights_->save(archive); }

void WeightAverage::load(torch::serialize::InputArchive& archive) { weights_->load(archive); }

}  // namespace trainloop::callbacks
