#include "trainloop/loop_state.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "trainloop/error.h"

namespace trainloop {

namespace {
constexpr const char* kValidationPrefix = "val_";
}

const char* to_string(Phase phase) {
  switch (phase) {
    case Phase::training: return "training";
    case Phase::validation: return "validation";
    case Phase::evaluation: return "evaluation";
    case Phase::prediction: return "prediction";
  }
  return "unknown_phase";
}

double LoopState::metric(const std::string& name) const {
  const bool validation = name.rfind(kValidationPrefix, 0) == 0;
  const auto& metrics = validation ? validation_metrics : training_metrics;
  const std::string bare = validation ? name.substr(std::string(kValidationPrefix).size()) : name;
  for (const auto& metric : metrics) {
    if (metric->name() == bare) return metric->compute();
  }
  throw Error(fmt::format("LoopState::metric: no metric named \"{}\"; known: {}", name,
                          fmt::join(metric_names(), ", ")));
}

std::vector<std::string> LoopState::metric_names() const {
  std::vector<std::string> names;
  for (const auto& metric : training_metrics) names.push_back(metric->name());
  for (const auto& metric : validation_metrics) names.push_back(kValidationPrefix + metric->name());
  return names;
}

std::map<std::string, double> LoopState::metric_values() const {
  std::map<std::string, double> values;
  // emplace keeps the first of two metrics sharing a name, as metric() does.
  for (const auto& metric : training_metrics) values.emplace(metric->name(), metric->compute());
  for (const auto& metric : validation_metrics) {
    values.emplace(kValidationPrefix + metric->name(), metric->compute());
  }
  return values;
}

const std::vector<std::shared_ptr<Metric>>& LoopState::phase_metrics() const {
  return phase == Phase::training ? training_metrics : validation_metrics;
}

double LoopState::learning_rate() const {
  if (optimizer == nullptr || optimizer->param_groups().empty()) {
    throw Error("LoopState::learning_rate: no optimizer with parameter groups");
  }
  return optimizer->param_groups().front().options().get_lr();
}

void LoopState::set_learning_rate(double rate) {
  if (optimizer == nullptr) throw Error("LoopState::set_learning_rate: no optimizer");
  for (auto& group : optimizer->param_groups()) group.options().set_lr(rate);
}

}  // namespace trainloop
