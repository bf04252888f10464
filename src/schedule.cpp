#include "trainloop/schedule.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "trainloop/error.h"

namespace trainloop {

namespace shapes {

double linear(double start, double end, double t) { return (end - start) * t + start; }

double cosine(double start, double end, double t) {
  // Written as PyTorch's _annealing_cos, operation for operation, so the
  // one-cycle schedule reproduces OneCycleLR to the last bit.
  const double cos_out = std::cos(M_PI * t) + 1;
  return end + (start - end) / 2.0 * cos_out;
}

double exponential(double start, double end, double t) {
  if (!(start > 0) || !(end > 0)) {
    throw Error(fmt::format("shapes::exponential: start rate {} and end rate {}, expected both > 0",
                            start, end));
  }
  return start * std::pow(end / start, t);
}

double constant(double /*start*/, double end, double /*t*/) { return end; }

Shape from_weight(std::function<double(double t)> weight) {
  if (!weight) throw Error("shapes::from_weight: the weight function is empty");
  return [weight = std::move(weight)](double start, double end, double t) {
    return start + (end - start) * weight(t);
  };
}

}  // namespace shapes

Schedule::Schedule(std::vector<Segment> segments) : segments_(std::move(segments)) {
  if (segments_.empty()) throw Error("Schedule: no segments, expected at least one");
  std::optional<size_t> open;
  double previous_end = 0;
  for (size_t i = 0; i < segments_.size(); ++i) {
    Segment& segment = segments_[i];
    if (!segment.shape) throw Error(fmt::format("Schedule: segment {} has no shape", i));
    if (!segment.start_rate) {
      if (i == 0) {
        throw Error("Schedule: segment 0 has no start rate; the first segment needs one "
                    "(later ones default to where the previous segment ended)");
      }
      // Resolved once here: every start rate is known before the fit's
      // length is, so rate() never has to look back.
      segment.start_rate = previous_end;
    }
    if (!std::isfinite(*segment.start_rate) || !std::isfinite(segment.end_rate)) {
      throw Error(fmt::format("Schedule: segment {} goes from {} to {}, expected finite rates", i,
                              *segment.start_rate, segment.end_rate));
    }
    if (segment.step_count) {
      if (*segment.step_count < 0) {
        throw Error(fmt::format("Schedule: segment {} has step_count {}, expected >= 0", i,
                                *segment.step_count));
      }
      fixed_steps_ += *segment.step_count;
    } else if (open) {
      throw Error(fmt::format("Schedule: segments {} and {} both have no step count; at most one "
                              "segment may fill the rest of the fit",
                              *open, i));
    } else {
      open = i;
    }
    // Try the shape at both ends now, so a bad shape (e.g. exponential from
    // 0) fails when the schedule is made, not in the middle of a fit.
    for (const double t : {0.0, 1.0}) {
      double value = 0;
      try {
        value = segment.shape(*segment.start_rate, segment.end_rate, t);
      } catch (const std::exception& e) {
        throw Error(fmt::format("Schedule: segment {}: {}", i, e.what()));
      }
      if (!std::isfinite(value)) {
        throw Error(fmt::format("Schedule: segment {}'s shape gives {} at t = {} (from {} to {}), "
                                "expected a finite rate",
                                i, value, t, *segment.start_rate, segment.end_rate));
      }
    }
    previous_end = segment.end_rate;
  }
}

Schedule Schedule::from_function(RateFunction function) {
  if (!function) throw Error("Schedule::from_function: the function is empty");
  Schedule schedule;
  schedule.function_ = std::move(function);
  return schedule;
}

double Schedule::rate(int64_t step, int64_t total_steps) const {
  if (step < 0 || total_steps < 0) {
    throw Error(fmt::format("Schedule::rate: step {} of {} total steps, expected both >= 0", step,
                            total_steps));
  }
  if (function_) return function_(step, total_steps);
  return segment_rate(step, total_steps);
}

double Schedule::segment_rate(int64_t step, int64_t total_steps) const {
  if (fixed_steps_ > total_steps) {
    throw Error(fmt::format("Schedule: the segments' step counts add up to {} steps, more than "
                            "the {} steps of the fit",
                            fixed_steps_, total_steps));
  }
  const int64_t rest = total_steps - fixed_steps_;
  int64_t start = 0;
  for (const Segment& segment : segments_) {
    const int64_t count = segment.step_count.value_or(rest);
    if (step < start + count) {
      const double t = static_cast<double>(step - start) / static_cast<double>(count);
      return segment.shape(*segment.start_rate, segment.end_rate, t);
    }
    start += count;
  }
  return segments_.back().end_rate;
}

Schedule Schedule::with_momentum(Schedule momentum) const {
  Schedule copy = *this;
  copy.momentum_ = std::make_shared<const Schedule>(std::move(momentum));
  return copy;
}

double Schedule::momentum(int64_t step, int64_t total_steps) const {
  if (!momentum_) throw Error("Schedule::momentum: this schedule has no momentum schedule");
  return momentum_->rate(step, total_steps);
}

namespace schedules {

namespace {
void check_warmup(const char* name, double peak, int64_t warmup_steps) {
  if (!std::isfinite(peak)) throw Error(fmt::format("{}: peak {}, expected finite", name, peak));
  if (warmup_steps < 0) {
    throw Error(fmt::format("{}: warmup_steps {}, expected >= 0", name, warmup_steps));
  }
}
}  // namespace

Schedule warmup_linear(double peak, int64_t warmup_steps) {
  check_warmup("schedules::warmup_linear", peak, warmup_steps);
  return Schedule({{shapes::linear, 0.0, peak, warmup_steps}, {shapes::linear, {}, 0.0, {}}});
}

Schedule warmup_cosine(double peak, int64_t warmup_steps, double final_rate) {
  check_warmup("schedules::warmup_cosine", peak, warmup_steps);
  return Schedule(
      {{shapes::linear, 0.0, peak, warmup_steps}, {shapes::cosine, {}, final_rate, {}}});
}

namespace {

// The rate (or momentum) of OneCycleLR's two phases, computed as its
// get_lr does: the first phase ends at the float step pct * T - 1, the
// second at T - 1, and the progress is a float ratio within the phase.
Schedule one_cycle_phases(double pct_start, Shape anneal, double start, double middle,
                          double end) {
  return Schedule::from_function([=](int64_t step, int64_t total_steps) {
    const double first_end = pct_start * static_cast<double>(total_steps) - 1;
    if (!(first_end > 0)) {
      throw Error(fmt::format("schedules::one_cycle: pct_start {} of {} total steps leaves no "
                              "warm-up step, expected pct_start * total_steps > 1",
                              pct_start, total_steps));
    }
    const double last = static_cast<double>(total_steps - 1);
    const double k = std::min(static_cast<double>(step), last);
    if (k <= first_end) return anneal(start, middle, k / first_end);
    return anneal(middle, end, (k - first_end) / (last - first_end));
  });
}

}  // namespace

Schedule one_cycle(double max_lr, OneCycleOptions options) {
  const auto positive = [](const char* what, double value) {
    if (!(value > 0) || !std::isfinite(value)) {
      throw Error(fmt::format("schedules::one_cycle: {} {}, expected a finite value > 0", what,
                              value));
    }
  };
  positive("max_lr", max_lr);
  positive("div_factor", options.div_factor());
  positive("final_div_factor", options.final_div_factor());
  if (!(options.pct_start() > 0 && options.pct_start() <= 1)) {
    throw Error(fmt::format("schedules::one_cycle: pct_start {}, expected in (0, 1]",
                            options.pct_start()));
  }
  if (!options.anneal()) throw Error("schedules::one_cycle: the anneal shape is empty");
  const double initial = max_lr / options.div_factor();
  const double final_rate = initial / options.final_div_factor();
  Schedule schedule =
      one_cycle_phases(options.pct_start(), options.anneal(), initial, max_lr, final_rate);
  if (!options.cycle_momentum()) return schedule;
  for (const double momentum : {options.base_momentum(), options.max_momentum()}) {
    if (!(momentum >= 0 && momentum < 1)) {
      throw Error(fmt::format("schedules::one_cycle: momentum {}, expected in [0, 1)", momentum));
    }
  }
  return schedule.with_momentum(one_cycle_phases(options.pct_start(), options.anneal(),
                                                 options.max_momentum(), options.base_momentum(),
                                                 options.max_momentum()));
}

Schedule step_decay(double initial, double factor, int64_t every_n_steps) {
  if (every_n_steps < 1) {
    throw Error(fmt::format("schedules::step_decay: every_n_steps {}, expected >= 1",
                            every_n_steps));
  }
  if (!std::isfinite(initial) || !std::isfinite(factor)) {
    throw Error(fmt::format("schedules::step_decay: initial {} and factor {}, expected finite",
                            initial, factor));
  }
  return Schedule::from_function([=](int64_t step, int64_t /*total_steps*/) {
    return initial * std::pow(factor, static_cast<double>(step / every_n_steps));
  });
}

}  // namespace schedules

}  // namespace trainloop
