#pragma once

#include <torch/script.h>
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "trainloop/export.h"

namespace trainloop {

namespace detail {
template <class T, class = void>
struct has_tensor_forward : std::false_type {};
template <class T>
struct has_tensor_forward<
    T, std::void_t<decltype(std::declval<T&>().forward(std::declval<torch::Tensor>()))>>
    : std::true_type {};
}  // namespace detail

/// A type-erased handle to a trainable model, so the loop is not a template.
/// Converts implicitly from a module holder (`LeNet model;`), a
/// `std::shared_ptr` to a module with `forward(Tensor)`, a
/// `torch::nn::AnyModule`, or a TorchScript `torch::jit::Module`. Copies share
/// the same module.
class TRAINLOOP_API Model {
 public:
  using Forward = std::function<torch::Tensor(const torch::Tensor&)>;

  /// A module holder such as `torch::nn::Linear` or a `TORCH_MODULE` type.
  template <class Impl>
  Model(const torch::nn::ModuleHolder<Impl>& holder)  // NOLINT: implicit by design
      : Model(holder.ptr()) {}

  /// A shared pointer to a module whose `forward` takes one tensor.
  template <class Impl, class = std::enable_if_t<std::is_base_of_v<torch::nn::Module, Impl> &&
                                                 detail::has_tensor_forward<Impl>::value>>
  Model(std::shared_ptr<Impl> module)  // NOLINT: implicit by design
      : module_(module), forward_([module](const torch::Tensor& x) {
          return torch::Tensor(module->forward(x));
        }) {}

  /// Any module with an explicit forward function, e.g. a plain
  /// `std::shared_ptr<torch::nn::Module>` whose forward is not virtual.
  Model(std::shared_ptr<torch::nn::Module> module, Forward forward);

  /// A `torch::nn::AnyModule` (its `forward` must return a tensor).
  Model(torch::nn::AnyModule module);  // NOLINT: implicit by design

  /// A TorchScript module, e.g. one saved from Python with `torch.jit.save`.
  Model(torch::jit::Module module);  // NOLINT: implicit by design

  /// Runs the model on one batch of inputs.
  torch::Tensor forward(const torch::Tensor& inputs) const;
  torch::Tensor operator()(const torch::Tensor& inputs) const { return forward(inputs); }

  /// All trainable parameters, e.g. to build an optimizer.
  std::vector<torch::Tensor> parameters() const;
  /// Parameters by their dotted names.
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;
  /// Buffers (e.g. batch-norm statistics) by their dotted names.
  std::vector<std::pair<std::string, torch::Tensor>> named_buffers() const;

  /// Switches training mode (dropout, batch norm) on or off.
  void train(bool on = true);
  /// Whether training mode is on.
  bool is_training() const;
  /// Moves parameters and buffers to `device` in place, so an optimizer built
  /// before the move still refers to them.
  void to(const torch::Device& device);

  /// The module, or null for a TorchScript model.
  std::shared_ptr<torch::nn::Module> module() const { return module_; }
  /// The TorchScript module, if this is one.
  const std::optional<torch::jit::Module>& script() const { return script_; }

 private:
  std::shared_ptr<torch::nn::Module> module_;
  std::optional<torch::jit::Module> script_;
  Forward forward_;
};

}  // namespace trainloop
