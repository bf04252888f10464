#include "trainloop/lr_finder.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <sstream>
#include <utility>

#include "io/files.h"
#include "svg/line_chart.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {

namespace {

// fastai leaves the last 5 steps out of the suggestion and the plot: the
// loss shoots up there and would flatten the interesting part.
constexpr size_t kSkipEnd = 5;

void check(const LrFinderOptions& options) {
  if (!(options.start_lr() > 0) || !std::isfinite(options.start_lr())) {
    throw Error(fmt::format("lr_find: start_lr {}, expected a positive number", options.start_lr()));
  }
  if (!(options.end_lr() > options.start_lr()) || !std::isfinite(options.end_lr())) {
    throw Error(fmt::format("lr_find: end_lr {}, expected a finite number above start_lr {}",
                            options.end_lr(), options.start_lr()));
  }
  if (options.step_count() < 2) {
    throw Error(fmt::format("lr_find: step_count {}, expected at least 2", options.step_count()));
  }
  if (!(options.smoothing() >= 0 && options.smoothing() < 1)) {
    throw Error(fmt::format("lr_find: smoothing {}, expected a number in [0, 1)",
                            options.smoothing()));
  }
  if (!(options.divergence_factor() > 1)) {
    throw Error(fmt::format("lr_find: divergence_factor {}, expected a number above 1",
                            options.divergence_factor()));
  }
}

// Everything the sweep changes, deep-copied before it starts.
class Snapshot {
 public:
  Snapshot(Model& model, torch::optim::Optimizer& optimizer)
      : model_(model), optimizer_(optimizer) {
    for (auto& [name, tensor] : model.named_parameters()) {
      parameters_.push_back(tensor);
      parameter_values_.push_back(tensor.detach().clone());
      gradients_.push_back(tensor.grad().defined() ? tensor.grad().detach().clone()
                                                   : torch::Tensor());
    }
    for (auto& [name, tensor] : model.named_buffers()) {
      buffers_.push_back(tensor);
      buffer_values_.push_back(tensor.detach().clone());
    }
    if (!parameters_.empty()) device_ = parameters_.front().device();
    training_ = model.module() ? model.module()->is_training()
                               : model.script() && model.script()->is_training();
    // Serialized rather than cloned entry by entry: this works for every
    // optimizer type, and the bytes are a deep copy of buffers the sweep
    // updates in place (momentum, exp_avg, step counts).
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to(optimizer_state_);
    for (auto& group : optimizer.param_groups()) rates_.push_back(group.options().get_lr());
  }

  std::optional<torch::Device> device() const { return device_; }

  void restore() {
    if (device_ && !parameters_.empty() && parameters_.front().device() != *device_) {
      model_.to(*device_);
    }
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < parameters_.size(); ++i) {
        parameters_[i].copy_(parameter_values_[i]);
        parameters_[i].mutable_grad() = gradients_[i];
      }
      for (size_t i = 0; i < buffers_.size(); ++i) buffers_[i].copy_(buffer_values_[i]);
    }
    model_.train(training_);
    // load() only overwrites the entries it finds, so entries the sweep
    // created (momentum of a fresh optimizer) must go first.
    optimizer_.state().clear();
    torch::serialize::InputArchive archive;
    optimizer_state_.seekg(0);
    archive.load_from(optimizer_state_);
    optimizer_.load(archive);
    for (size_t i = 0; i < rates_.size() && i < optimizer_.param_groups().size(); ++i) {
      optimizer_.param_groups()[i].options().set_lr(rates_[i]);
    }
  }

 private:
  Model& model_;
  torch::optim::Optimizer& optimizer_;
  std::vector<torch::Tensor> parameters_, parameter_values_, gradients_;
  std::vector<torch::Tensor> buffers_, buffer_values_;
  std::optional<torch::Device> device_;
  bool training_ = true;
  std::stringstream optimizer_state_;
  std::vector<double> rates_;
};

// The range the suggestions look at: fastai's [n/10, n-5), shrunk when an
// early divergence left few steps.
std::pair<size_t, size_t> suggestion_range(size_t count) {
  size_t first = count / 10;
  size_t end = count > kSkipEnd ? count - kSkipEnd : count;
  if (end < first + 2) {
    first = 0;
    end = count;
  }
  return {first, end};
}

void suggest(LrFinderResult& result) {
  const auto& rates = result.rates;
  const auto& smoothed = result.smoothed_losses;
  const auto [first, end] = suggestion_range(rates.size());
  size_t best = first;
  for (size_t i = first; i < end; ++i) {
    if (smoothed[i] < smoothed[best] || !std::isfinite(smoothed[best])) best = i;
  }
  result.suggested_min_div10 = rates[best] / 10;
  size_t steepest = first;
  double steepest_slope = std::numeric_limits<double>::infinity();
  for (size_t i = first; i + 1 < end; ++i) {
    const double slope =
        (smoothed[i + 1] - smoothed[i]) / (std::log(rates[i + 1]) - std::log(rates[i]));
    if (slope < steepest_slope) {
      steepest_slope = slope;
      steepest = i;
    }
  }
  result.suggested_steepest = rates[steepest];
}

void draw(const LrFinderResult& result, const std::string& path) {
  svg::Panel panel;
  panel.title = "loss vs learning rate";
  panel.x_label = "learning rate (log scale)";
  panel.y_label = "smoothed loss";
  panel.log_x = true;
  svg::Series line;
  line.name = "smoothed training loss";
  const size_t count = result.rates.size();
  const size_t end = count > 2 * kSkipEnd ? count - kSkipEnd : count;
  line.x.assign(result.rates.begin(), result.rates.begin() + static_cast<std::ptrdiff_t>(end));
  line.y.assign(result.smoothed_losses.begin(),
                result.smoothed_losses.begin() + static_cast<std::ptrdiff_t>(end));
  panel.series.push_back(std::move(line));
  panel.markers.push_back({result.suggested_steepest,
                           fmt::format("steepest {:.1e}", result.suggested_steepest)});
  panel.markers.push_back({result.suggested_min_div10,
                           fmt::format("minimum/10 {:.1e}", result.suggested_min_div10)});
  svg::Chart chart;
  chart.title = "Learning-rate finder";
  chart.panels.push_back(std::move(panel));
  chart.panel_width = 620;
  chart.panel_height = 400;
  io::write_atomically(path, svg::render(chart));
}

}  // namespace

LrFinderResult lr_find(TrainingLoop& loop, Model model, LrFinderOptions options) {
  check(options);
  torch::optim::Optimizer& optimizer = loop.optimizer();
  if (optimizer.param_groups().empty()) throw Error("lr_find: the optimizer has no parameters");

  Snapshot snapshot(model, optimizer);
  const torch::Device device = options.device().value_or(snapshot.device().value_or(torch::kCPU));
  const auto steps = static_cast<size_t>(options.step_count());
  const double growth = std::log(options.end_lr() / options.start_lr()) /
                        static_cast<double>(options.step_count() - 1);

  LrFinderResult result;
  double average = 0;
  double best = std::numeric_limits<double>::infinity();
  auto sweep = callbacks::lambda(
      [&](Event event, TrainingLoop& sweep_loop) {
        LoopState& state = sweep_loop.state();
        if (state.phase != Phase::training) return;
        if (event == Event::batch_start) {
          const double rate =
              options.start_lr() * std::exp(growth * static_cast<double>(result.rates.size()));
          state.set_learning_rate(rate);
        } else if (event == Event::batch_end) {
          const double loss = state.loss.item<double>();
          const auto step = static_cast<double>(result.rates.size() + 1);
          average = options.smoothing() * average + (1 - options.smoothing()) * loss;
          // Bias correction: the average starts at 0, not at the first loss.
          const double smoothed = average / (1 - std::pow(options.smoothing(), step));
          result.rates.push_back(state.learning_rate());
          result.losses.push_back(loss);
          result.smoothed_losses.push_back(smoothed);
          if (!std::isfinite(smoothed) || smoothed > options.divergence_factor() * best) {
            result.diverged = true;
            throw CancelFit();
          }
          best = std::min(best, smoothed);
          if (result.rates.size() >= steps) throw CancelFit();
        }
      },
      "lr_find");

  try {
    TrainingLoop sweep_loop(loop.training_data(), nullptr, optimizer, loop.loss_function(), {},
                            {sweep});
    // Every epoch has at least one batch, so step_count epochs are enough;
    // the callback ends the fit after the last step.
    sweep_loop.fit(model, options.step_count(), device);
  } catch (...) {
    snapshot.restore();
    throw;
  }
  snapshot.restore();

  if (result.rates.empty()) throw Error("lr_find: the training data gave no batches");
  suggest(result);
  if (!options.svg_path().empty()) draw(result, options.svg_path());
  return result;
}

}  // namespace trainloop
