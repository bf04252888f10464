#include "trainloop/model.h"

#include "trainloop/error.h"

namespace trainloop {

Model::Model(std::shared_ptr<torch::nn::Module> module, Forward forward)
    : module_(std::move(module)), forward_(std::move(forward)) {
  if (!module_) throw Error("Model: the module pointer is null");
  if (!forward_) throw Error("Model: the forward function is empty");
}

Model::Model(torch::nn::AnyModule module) {
  if (module.is_empty()) throw Error("Model: the AnyModule is empty");
  module_ = module.ptr();
  forward_ = [module](const torch::Tensor& x) mutable { return module.forward(x); };
}

Model::Model(torch::jit::Module module) : script_(std::move(module)) {
  forward_ = [script = *script_](const torch::Tensor& x) mutable {
    const torch::IValue output = script.forward({x});
    if (!output.isTensor()) {
      throw Error("Model: the TorchScript module's forward returned " +
                  output.tagKind() + ", expected a Tensor");
    }
    return output.toTensor();
  };
}

torch::Tensor Model::forward(const torch::Tensor& inputs) const { return forward_(inputs); }

std::vector<torch::Tensor> Model::parameters() const {
  if (module_) return module_->parameters();
  std::vector<torch::Tensor> result;
  for (const auto& parameter : script_->parameters()) result.push_back(parameter);
  return result;
}

std::vector<std::pair<std::string, torch::Tensor>> Model::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> result;
  if (module_) {
    for (const auto& item : module_->named_parameters()) result.emplace_back(item.key(), item.value());
  } else {
    for (const auto& item : script_->named_parameters()) result.emplace_back(item.name, item.value);
  }
  return result;
}

std::vector<std::pair<std::string, torch::Tensor>> Model::named_buffers() const {
  std::vector<std::pair<std::string, torch::Tensor>> result;
  if (module_) {
    for (const auto& item : module_->named_buffers()) result.emplace_back(item.key(), item.value());
  } else {
    for (const auto& item : script_->named_buffers()) result.emplace_back(item.name, item.value);
  }
  return result;
}

void Model::train(bool on) {
  if (module_) {
    module_->train(on);
  } else {
    script_->train(on);
  }
}

bool Model::is_training() const { return module_ ? module_->is_training() : script_->is_training(); }

void Model::to(const torch::Device& device) {
  if (module_) {
    module_->to(device);
  } else {
    script_->to(device);
  }
}

}  // namespace trainloop
