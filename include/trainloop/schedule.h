#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "trainloop/export.h"

namespace trainloop {

/// How a segment moves from its start rate to its end rate: returns the rate
/// at progress `t` in [0, 1] through the segment (t = 0 at its first step).
/// The ready shapes are in `shapes`; any function of this signature works.
/// Example: `[](double start, double end, double t) { return start + (end - start) * t * t; }`
using Shape = std::function<double(double start, double end, double t)>;

namespace shapes {
/// Straight line: `start + (end - start) * t`.
TRAINLOOP_API double linear(double start, double end, double t);
/// Half cosine, flat at both ends: `end + (start - end) / 2 * (cos(pi * t) + 1)`
/// (PyTorch's annealing formula, evaluated the same way).
TRAINLOOP_API double cosine(double start, double end, double t);
/// Geometric interpolation: `start * (end / start)^t`, a straight line on a
/// log scale. Both rates must be > 0, else `Error`.
TRAINLOOP_API double exponential(double start, double end, double t);
/// Holds the end rate throughout (the start rate is ignored), so
/// `{shapes::constant, {}, 0.01, 100}` means "0.01 for 100 steps".
TRAINLOOP_API double constant(double start, double end, double t);
/// A shape from a weight function `w` mapping t in [0, 1] to [0, 1]:
/// `start + (end - start) * w(t)`.
/// Example: `shapes::from_weight([](double t) { return t * t; })`
TRAINLOOP_API Shape from_weight(std::function<double(double t)> weight);
}  // namespace shapes

/// One piece of a `Schedule`: a shape between two rates over a number of steps.
/// Example: `Segment{shapes::linear, 0.0, 1e-3, 10}` (0 → 1e-3 over 10 steps),
/// `Segment{shapes::linear, {}, 0.0}` (from where the previous one ended to 0,
/// over the rest of the fit).
struct Segment {
  /// All four fields; `start_rate` may be `{}` and `step_count` left out.
  Segment(Shape shape, std::optional<double> start_rate, double end_rate,
          std::optional<int64_t> step_count = std::nullopt)
      : shape(std::move(shape)),
        start_rate(start_rate),
        end_rate(end_rate),
        step_count(step_count) {}
  /// How the rate moves from start to end.
  Shape shape;
  /// The rate at the segment's first step; empty: the previous segment's end
  /// rate (the first segment must have one).
  std::optional<double> start_rate;
  /// The rate the segment reaches at its end, which is the first step of the
  /// next segment (or the position just after the last step of the fit).
  double end_rate;
  /// Steps the segment lasts (>= 0); empty: all the steps of the fit that
  /// the other segments leave (at most one segment may leave it empty).
  std::optional<int64_t> step_count;
};

/// A learning-rate schedule: the rate for each optimizer step of a fit.
///
/// Built from segments, the schedule is a continuous curve over step
/// positions 0..total_steps, sampled at each step. Segment j covers steps
/// [s_j, s_j + n_j), where s_j is the sum of the earlier segments' counts;
/// step s_j + i (0 <= i < n_j) uses `shape(start, end, i / n_j)`. So a
/// segment's first step uses its start rate and its end rate is reached at
/// s_j + n_j: the first step of the next segment when that one starts where
/// this one ended, or, for the last segment, the position total_steps, just
/// after the last update. Steps past every segment (fixed counts shorter
/// than the fit, or step >= total_steps) use the last segment's end rate.
///
/// Example, BERT-CoLA's warm-up and decay (`peak` = peak rate, T = total steps):
///   Schedule({{shapes::linear, 0.0, peak, 10}, {shapes::linear, {}, 0.0}})
/// step k < 10 uses peak * k / 10; step k >= 10 uses peak * (T - k) / (T - 10):
/// step 0 uses 0, step 10 uses peak, step T - 1 uses peak / (T - 10), and the
/// rate would reach 0 at step T, the end of training.
///
/// Schedules can also carry a momentum schedule (see `with_momentum`), as
/// `schedules::one_cycle` does; `callbacks::lr_scheduler` applies both.
class TRAINLOOP_API Schedule {
 public:
  /// The rate for 0-based `step` (used by update number step + 1) of a fit
  /// of `total_steps` steps.
  using RateFunction = std::function<double(int64_t step, int64_t total_steps)>;

  /// A schedule made of `segments`, checked here: at least one segment, a
  /// start rate on the first, finite rates, step counts >= 0, at most one
  /// segment without a step count, shapes that give finite rates. Throws
  /// `Error` naming the segment otherwise.
  explicit Schedule(std::vector<Segment> segments);

  /// A schedule given by a function of (step, total_steps), for forms that
  /// segments do not express (e.g. PyTorch's one-cycle phase boundaries).
  static Schedule from_function(RateFunction function);

  /// The rate for 0-based `step` of a fit of `total_steps` steps. Throws
  /// `Error` when a count is negative, or when the fixed step counts add up
  /// to more than `total_steps` (the message names both numbers).
  double rate(int64_t step, int64_t total_steps) const;

  /// A copy of this schedule that also sets the optimizer's momentum (SGD's
  /// momentum, Adam's and AdamW's beta1) to `momentum.rate(step, total)`.
  Schedule with_momentum(Schedule momentum) const;
  /// Whether a momentum schedule is attached.
  bool has_momentum() const { return momentum_ != nullptr; }
  /// The momentum for `step` of `total_steps`; `Error` without a momentum schedule.
  double momentum(int64_t step, int64_t total_steps) const;

  /// The segments (empty for a schedule made by `from_function`).
  const std::vector<Segment>& segments() const { return segments_; }

 private:
  Schedule() = default;
  double segment_rate(int64_t step, int64_t total_steps) const;

  std::vector<Segment> segments_;
  RateFunction function_;
  int64_t fixed_steps_ = 0;
  std::shared_ptr<const Schedule> momentum_;
};

namespace schedules {

/// Linear warm-up from 0 to `peak` over `warmup_steps` steps, then linear
/// decay to 0 at the end of the fit (BERT's schedule; HuggingFace's
/// get_linear_schedule_with_warmup). Step k < w uses peak * k / w, step k >= w
/// uses peak * (T - k) / (T - w).
TRAINLOOP_API Schedule warmup_linear(double peak, int64_t warmup_steps);

/// Linear warm-up from 0 to `peak` over `warmup_steps` steps, then half-cosine
/// decay to `final_rate` at the end of the fit.
TRAINLOOP_API Schedule warmup_cosine(double peak, int64_t warmup_steps, double final_rate = 0.0);

/// Settings for `one_cycle`; the defaults are PyTorch's OneCycleLR defaults.
/// Example: `OneCycleOptions().pct_start(0.25).cycle_momentum(false)`
struct OneCycleOptions {
  OneCycleOptions() = default;
  /// Fraction of the steps spent rising to the maximum rate, in (0, 1].
  TORCH_ARG(double, pct_start) = 0.3;
  /// Initial rate = max_lr / div_factor.
  TORCH_ARG(double, div_factor) = 25.0;
  /// Final rate = initial rate / final_div_factor.
  TORCH_ARG(double, final_div_factor) = 1e4;
  /// Shape of both phases: `shapes::cosine` (PyTorch "cos") or
  /// `shapes::linear` (PyTorch "linear").
  TORCH_ARG(Shape, anneal) = shapes::cosine;
  /// Whether to cycle momentum inversely to the rate.
  TORCH_ARG(bool, cycle_momentum) = true;
  /// Momentum at the peak rate.
  TORCH_ARG(double, base_momentum) = 0.85;
  /// Momentum at the start and the end.
  TORCH_ARG(double, max_momentum) = 0.95;
};

/// The one-cycle policy, matching torch.optim.lr_scheduler.OneCycleLR
/// (three_phase=False) step for step: with T total steps and
/// e = pct_start * T - 1, step k <= e anneals from max_lr / div_factor up to
/// max_lr with progress k / e; later steps anneal from max_lr down to
/// max_lr / div_factor / final_div_factor with progress (k - e) / (T - 1 - e),
/// so step T - 1 uses the final rate (and steps past T - 1 keep it). Momentum
/// (when cycled) goes max → base → max on the same phases.
/// `rate` throws `Error` when pct_start * T <= 1 (no warm-up step).
TRAINLOOP_API Schedule one_cycle(double max_lr, OneCycleOptions options = {});

/// `initial * factor^floor(step / every_n_steps)` (PyTorch's StepLR).
TRAINLOOP_API Schedule step_decay(double initial, double factor, int64_t every_n_steps);

}  // namespace schedules

}  // namespace trainloop
