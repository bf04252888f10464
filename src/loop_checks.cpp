#include "loop_checks.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <set>

#include "error_text.h"
#include "trainloop/error.h"

namespace trainloop::detail {

std::string shape_text(const torch::Tensor& tensor) {
  if (!tensor.defined()) return "none";
  return fmt::format("{} {}", c10::toString(tensor.scalar_type()), sizes_text(tensor.sizes()));
}

std::string position(const LoopState& state) {
  if (state.phase == Phase::training || state.phase == Phase::validation) {
    return fmt::format("{}, epoch {}/{}, batch {}/{}", to_string(state.phase), state.epoch + 1,
                       state.epoch_count, state.batch + 1, state.batch_count);
  }
  return fmt::format("{}, batch {}/{}", to_string(state.phase), state.batch + 1, state.batch_count);
}

void check_class_targets(const LoopState& state) {
  const torch::Tensor& outputs = state.outputs;
  const torch::Tensor& targets = state.targets;
  if (!outputs.defined() || !targets.defined() || outputs.dim() != 2 || outputs.size(1) < 2 ||
      targets.dim() != 1 || targets.size(0) != outputs.size(0) || targets.numel() == 0 ||
      !c10::isIntegralType(targets.scalar_type(), /*includeBool=*/false)) {
    return;
  }
  const int64_t low = targets.min().item<int64_t>();
  const int64_t high = targets.max().item<int64_t>();
  const int64_t classes = outputs.size(1);
  if (low < 0 || high >= classes) {
    throw Error(fmt::format("class targets reach {}, but the model's outputs ({}) give {} classes: "
                            "expected targets 0 to {}",
                            low < 0 ? low : high, shape_text(outputs), classes, classes - 1));
  }
}

void check_optimizer_parameters(torch::optim::Optimizer& optimizer, const Model& model) {
  std::set<const void*> model_parameters;
  for (const auto& parameter : model.parameters()) {
    model_parameters.insert(parameter.unsafeGetTensorImpl());
  }
  int64_t count = 0;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& parameter : group.params()) {
      if (model_parameters.count(parameter.unsafeGetTensorImpl()) != 0) return;
      ++count;
    }
  }
  // An optimizer of no parameters is a deliberate choice, not a mix-up.
  if (count == 0) return;
  throw Error(fmt::format("TrainingLoop::fit: none of the optimizer's {} parameters is a parameter "
                          "of the model ({} parameters); build the optimizer over "
                          "model->parameters() of the model passed to fit",
                          count, model_parameters.size()));
}

std::vector<OutputLock> lock_outputs(const std::vector<std::shared_ptr<Callback>>& callbacks) {
  std::vector<OutputLock> locks;
  std::map<std::string, std::string> writers;
  for (const auto& callback : callbacks) {
    for (const auto& output : callback->outputs()) {
      // Holds in one process count, so a second writer of the same output
      // is found by its lock file, not by the lock.
      locks.emplace_back(output.path, output.kind);
      const auto [known, fresh] = writers.emplace(locks.back().lock_file(), callback->state_key());
      if (!fresh) {
        throw Error(fmt::format("TrainingLoop::fit: callbacks {} and {} both write {}; give one "
                                "of them another path",
                                known->second, callback->state_key(), output.path));
      }
    }
  }
  return locks;
}

}  // namespace trainloop::detail
