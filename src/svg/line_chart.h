#pragma once

// A small SVG line-chart writer (private to the library): training curves and
// the learning-rate finder's loss curve, with no plotting dependency.

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace trainloop::svg {

/// One named line of (x, y) points. Non-finite points (and, on a log axis,
/// x <= 0) are skipped and break the line in two.
struct Series {
  std::string name;
  std::vector<double> x;
  std::vector<double> y;
  /// Dashed (validation) instead of solid (training).
  bool dashed = false;
  /// Index into the palette; by default the series' position in its panel.
  std::optional<size_t> color;
};

/// A labelled vertical line across a panel, e.g. a suggested learning rate.
struct Marker {
  double x = 0;
  std::string label;
};

/// One plot: axes, ticks, a legend and its lines.
struct Panel {
  std::string title;
  std::string x_label;
  std::string y_label;
  /// Logarithmic x axis (ticks at decades).
  bool log_x = false;
  /// Ticks of the x axis only at whole numbers (epochs).
  bool integer_x = false;
  /// Fixed y range; by default the data's, widened to whole ticks. Lines
  /// beyond it are clipped.
  std::optional<double> y_min;
  std::optional<double> y_max;
  std::vector<Series> series;
  std::vector<Marker> markers;
};

/// Several panels in a grid under one title.
struct Chart {
  std::string title;
  std::vector<Panel> panels;
  /// Panels per row; 0 chooses (1 for one panel, 2 up to four, else 3).
  size_t columns = 0;
  /// Size of one panel in pixels.
  double panel_width = 460;
  double panel_height = 320;
};

/// The colour-blind-safe palette (Okabe & Ito) the series cycle through.
const std::vector<std::string>& palette();

/// Tick values covering [low, high] at a 1-2-5 step, about `target` of them,
/// starting and ending on a multiple of the step at or beyond the range.
/// With `integer_only` the step is at least 1.
std::vector<double> nice_ticks(double low, double high, int target = 6,
                               bool integer_only = false);

/// Decade ticks (10^k) within [low, high] (both > 0); when the range spans
/// less than two decades, 2× and 5× ticks are added.
std::vector<double> log_ticks(double low, double high);

/// A tick label: as few digits as tell the ticks apart at `step`, without
/// trailing zeros ("0.2", "1", "1500"), or "1e-7" style for decades outside 0.001..1000 (step 0: log axis).
std::string tick_label(double value, double step);

/// The chart as an SVG document.
std::string render(const Chart& chart);

}  // namespace trainloop::svg
