#include "line_chart.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <utility>

#include "trainloop/error.h"

namespace trainloop::svg {

namespace {

constexpr const char* kFont = "DejaVu Sans, Helvetica, Arial, sans-serif";
constexpr double kTitleSize = 17;
constexpr double kPanelTitleSize = 14;
constexpr double kAxisTitleSize = 12;
constexpr double kTickSize = 11;
constexpr double kLegendSize = 11.5;
constexpr double kLegendRow = 18;
constexpr double kPad = 12;
// Series with at most this many points get a dot per point: a handful of
// epochs reads better with dots, a 100-step sweep is cleaner without.
constexpr size_t kMaxDotted = 40;

// Text width estimate. DejaVu Sans (rsvg's and most browsers' fallback) is
// about 0.6 em per digit or lower-case letter; overestimating only costs a
// few pixels of margin, underestimating makes labels collide.
double text_width(const std::string& text, double size) {
  return 0.62 * size * static_cast<double>(text.size());
}

std::string escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // Control characters are not allowed in XML 1.0 at all.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n') {
          out += ' ';
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string num(double value) { return fmt::format("{:.2f}", value); }

bool usable(double x, double y, bool log_x) {
  return std::isfinite(x) && std::isfinite(y) && (!log_x || x > 0);
}

// Maps data values to pixels along one axis.
struct Scale {
  double from_low, from_high;  // data (log10 of it on a log axis)
  double to_low, to_high;      // pixels
  bool log = false;
  double operator()(double value) const {
    const double v = log ? std::log10(value) : value;
    return to_low + (v - from_low) / (from_high - from_low) * (to_high - to_low);
  }
};

struct Range {
  double low = std::numeric_limits<double>::infinity();
  double high = -std::numeric_limits<double>::infinity();
  void add(double v) {
    low = std::min(low, v);
    high = std::max(high, v);
  }
  bool empty() const { return !(low <= high); }
};

struct Legend {
  std::vector<std::string> entries;  // SVG of each item, placed at (0, 0)
  std::vector<double> widths;
};

// Legend items laid out left to right, wrapped to `width`; returns rows used.
size_t legend_rows(const std::vector<double>& widths, double width) {
  if (widths.empty()) return 0;
  size_t rows = 1;
  double used = 0;
  for (double w : widths) {
    if (used > 0 && used + w > width) {
      ++rows;
      used = 0;
    }
    used += w;
  }
  return rows;
}

void render_panel(std::string& out, const Panel& panel, size_t index, double ox, double oy,
                  double width, double height) {
  const auto& colors = palette();
  auto color_of = [&](size_t position, const std::optional<size_t>& chosen) {
    return colors[chosen.value_or(position) % colors.size()];
  };

  // Data ranges.
  Range xr, yr;
  size_t most_points = 0;
  for (const auto& s : panel.series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    most_points = std::max(most_points, n);
    for (size_t i = 0; i < n; ++i) {
      if (!usable(s.x[i], s.y[i], panel.log_x)) continue;
      xr.add(s.x[i]);
      yr.add(s.y[i]);
    }
  }
  for (const auto& m : panel.markers) {
    if (std::isfinite(m.x) && (!panel.log_x || m.x > 0)) xr.add(m.x);
  }
  const bool has_data = !yr.empty();
  if (panel.y_min) yr.low = *panel.y_min;
  if (panel.y_max) yr.high = *panel.y_max;
  if (yr.empty()) yr = Range{0, 1};
  if (yr.low == yr.high) {
    const double pad = yr.low == 0 ? 0.5 : std::abs(yr.low) * 0.1;
    yr.low -= pad;
    yr.high += pad;
  }
  if (xr.empty()) xr = panel.log_x ? Range{1e-3, 1} : Range{panel.integer_x ? 1.0 : 0.0, panel.integer_x ? 2.0 : 1.0};

  // Axes: y extends to whole ticks; x keeps the data's range (its ticks
  // fall inside), as a curve should start at the first epoch.
  std::vector<double> y_ticks = nice_ticks(yr.low, yr.high, 5);
  const double y_step = y_ticks.size() > 1 ? y_ticks[1] - y_ticks[0] : 1;
  if (panel.y_min) y_ticks.erase(std::remove_if(y_ticks.begin(), y_ticks.end(), [&](double t) { return t < *panel.y_min - 1e-9 * y_step; }), y_ticks.end());
  if (panel.y_max) y_ticks.erase(std::remove_if(y_ticks.begin(), y_ticks.end(), [&](double t) { return t > *panel.y_max + 1e-9 * y_step; }), y_ticks.end());
  const double y_low = panel.y_min ? *panel.y_min : y_ticks.front();
  const double y_high = panel.y_max ? *panel.y_max : y_ticks.back();

  double x_low = xr.low, x_high = xr.high;
  std::vector<double> x_ticks;
  double x_step = 0;
  if (panel.log_x) {
    if (x_low == x_high) {
      x_low /= 3;
      x_high *= 3;
    }
    x_ticks = log_ticks(x_low, x_high);
  } else {
    if (x_low == x_high) {
      const double pad = panel.integer_x ? 0.5 : (x_low == 0 ? 0.5 : std::abs(x_low) * 0.1);
      x_low -= pad;
      x_high += pad;
    }
    x_ticks = nice_ticks(x_low, x_high, std::max(2, static_cast<int>(width / 80)), panel.integer_x);
    x_step = x_ticks.size() > 1 ? x_ticks[1] - x_ticks[0] : 1;
    const double slack = 1e-9 * x_step;
    x_ticks.erase(std::remove_if(x_ticks.begin(), x_ticks.end(),
                                 [&](double t) { return t < x_low - slack || t > x_high + slack; }),
                  x_ticks.end());
    // A little room at both ends, so the first and last dots do not sit on
    // the frame.
    const double inset = 0.03 * (x_high - x_low);
    x_low -= inset;
    x_high += inset;
  }

  std::vector<std::string> y_labels;
  double y_label_width = 0;
  for (double t : y_ticks) {
    y_labels.push_back(tick_label(t, y_step));
    y_label_width = std::max(y_label_width, text_width(y_labels.back(), kTickSize));
  }

  // Legend items: the series, then the markers.
  std::vector<double> item_widths;
  std::vector<std::string> item_names;
  for (const auto& s : panel.series) item_names.push_back(s.name);
  for (const auto& m : panel.markers) item_names.push_back(m.label);
  for (const auto& name : item_names) item_widths.push_back(28 + text_width(name, kLegendSize) + 18);

  const double left = ox + 8 + (panel.y_label.empty() ? 0 : kAxisTitleSize + 10) + y_label_width + 8;
  const double right = ox + width - 22;
  const double legend_top = oy + 32;
  const size_t rows = legend_rows(item_widths, right - left);
  const double top = legend_top + static_cast<double>(rows) * kLegendRow + 10;
  const double bottom = oy + height - 16 - kTickSize - (panel.x_label.empty() ? 0 : kAxisTitleSize + 10);

  const Scale sx{panel.log_x ? std::log10(x_low) : x_low, panel.log_x ? std::log10(x_high) : x_high,
                 left, right, panel.log_x};
  const Scale sy{y_low, y_high, bottom, top, false};

  out += fmt::format("<g class=\"panel\" data-title=\"{}\">\n", escape(panel.title));
  out += fmt::format(
      "<clipPath id=\"plot-area-{}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n",
      index, num(left - 5), num(top - 5), num(right - left + 10), num(bottom - top + 10));

  // Title, centred over the plot area.
  out += fmt::format(
      "<text class=\"panel-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" "
      "font-weight=\"bold\" fill=\"#222\">{}</text>\n",
      num((left + right) / 2), num(oy + 20), kPanelTitleSize, escape(panel.title));

  // Grid and ticks.
  out += "<g class=\"y-ticks\" font-size=\"" + fmt::format("{}", kTickSize) +
         "\" fill=\"#444\" text-anchor=\"end\">\n";
  for (size_t i = 0; i < y_ticks.size(); ++i) {
    const double y = sy(y_ticks[i]);
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e6e6\"/>", num(left),
                       num(right), num(y), num(y));
    out += fmt::format("<text x=\"{}\" y=\"{}\" dy=\"0.35em\">{}</text>\n", num(left - 7), num(y),
                       escape(y_labels[i]));
  }
  out += "</g>\n";
  out += "<g class=\"x-ticks\" font-size=\"" + fmt::format("{}", kTickSize) +
         "\" fill=\"#444\" text-anchor=\"middle\">\n";
  double last_label_end = -std::numeric_limits<double>::infinity();
  for (double t : x_ticks) {
    const double x = sx(t);
    const std::string label = tick_label(t, x_step);
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e6e6\"/>", num(x),
                       num(x), num(top), num(bottom));
    // A label that would touch its neighbour is left out; the grid line stays.
    const double half = text_width(label, kTickSize) / 2;
    if (x - half > last_label_end + 6) {
      out += fmt::format("<text x=\"{}\" y=\"{}\" dy=\"0.8em\">{}</text>", num(x), num(bottom + 6),
                         escape(label));
      last_label_end = x + half;
    }
    out += "\n";
  }
  out += "</g>\n";

  // Axis lines.
  out += fmt::format(
      "<path class=\"axes\" d=\"M{},{} V{} H{}\" fill=\"none\" stroke=\"#555\" stroke-width=\"1\"/>\n",
      num(left), num(top), num(bottom), num(right));

  // Axis titles.
  if (!panel.x_label.empty()) {
    out += fmt::format(
        "<text class=\"x-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" "
        "fill=\"#222\">{}</text>\n",
        num((left + right) / 2), num(oy + height - 10), kAxisTitleSize, escape(panel.x_label));
  }
  if (!panel.y_label.empty()) {
    const double x = ox + 8 + kAxisTitleSize;
    const double y = (top + bottom) / 2;
    out += fmt::format(
        "<text class=\"y-title\" x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\" "
        "text-anchor=\"middle\" font-size=\"{}\" fill=\"#222\">{}</text>\n",
        num(x), num(y), num(x), num(y), kAxisTitleSize, escape(panel.y_label));
  }

  if (!has_data) {
    out += fmt::format(
        "<text class=\"no-data\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" "
        "fill=\"#999\">no data yet</text>\n",
        num((left + right) / 2), num((top + bottom) / 2), kAxisTitleSize);
  }

  // Lines, clipped to the plot area (a fixed y range may cut a spike).
  const bool dots = most_points <= kMaxDotted;
  out += fmt::format("<g class=\"lines\" clip-path=\"url(#plot-area-{})\">\n", index);
  for (size_t k = 0; k < panel.markers.size(); ++k) {
    const auto& m = panel.markers[k];
    if (!std::isfinite(m.x) || (panel.log_x && m.x <= 0)) continue;
    const double x = sx(m.x);
    out += fmt::format(
        "<line class=\"marker\" data-x=\"{}\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" "
        "stroke-width=\"1.5\" stroke-dasharray=\"2 3\"/>\n",
        m.x, num(x), num(x), num(top), num(bottom),
        color_of(panel.series.size() + k, std::nullopt));
  }
  for (size_t k = 0; k < panel.series.size(); ++k) {
    const auto& s = panel.series[k];
    const std::string& color = color_of(k, s.color);
    out += fmt::format("<g class=\"series\" data-name=\"{}\">\n", escape(s.name));
    std::string path;
    std::string circles;
    bool pen_down = false;
    const size_t n = std::min(s.x.size(), s.y.size());
    for (size_t i = 0; i < n; ++i) {
      if (!usable(s.x[i], s.y[i], panel.log_x)) {
        pen_down = false;  // a gap, not a line across the missing point
        continue;
      }
      const double x = sx(s.x[i]), y = sy(s.y[i]);
      path += fmt::format("{}{},{} ", pen_down ? 'L' : 'M', num(x), num(y));
      pen_down = true;
      if (dots) circles += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"3\"/>", num(x), num(y));
    }
    if (!path.empty()) {
      path.pop_back();
      out += fmt::format(
          "<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" stroke-linejoin=\"round\" "
          "stroke-linecap=\"round\"{}/>\n",
          path, color, s.dashed ? " stroke-dasharray=\"7 4\"" : "");
    }
    if (!circles.empty()) {
      out += fmt::format("<g fill=\"{}\" stroke=\"white\" stroke-width=\"1\">{}</g>\n", color,
                         circles);
    }
    out += "</g>\n";
  }
  out += "</g>\n";

  // Legend rows above the plot area, so it never hides a line.
  out += fmt::format("<g class=\"legend\" font-size=\"{}\" fill=\"#222\">\n", kLegendSize);
  double x = left, y = legend_top + kLegendRow / 2;
  for (size_t k = 0; k < item_names.size(); ++k) {
    if (x > left && x + item_widths[k] > right) {
      x = left;
      y += kLegendRow;
    }
    const bool is_series = k < panel.series.size();
    const std::string& color =
        is_series ? color_of(k, panel.series[k].color) : color_of(k, std::nullopt);
    const char* dash = is_series ? (panel.series[k].dashed ? " stroke-dasharray=\"7 4\"" : "")
                                 : " stroke-dasharray=\"2 3\"";
    out += fmt::format(
        "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"{}/>",
        num(x), num(x + 24), num(y), num(y), color, is_series ? 2 : 1.5, dash);
    if (is_series && dots) {
      out += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\" stroke=\"white\"/>",
                         num(x + 12), num(y), color);
    }
    out += fmt::format("<text x=\"{}\" y=\"{}\" dy=\"0.35em\">{}</text>\n", num(x + 30), num(y),
                       escape(item_names[k]));
    x += item_widths[k];
  }
  out += "</g>\n</g>\n";
}

}  // namespace

const std::vector<std::string>& palette() {
  // Okabe & Ito, "Color Universal Design" (2008), in an order whose first
  // colours differ most; the yellow is last since it is faint on white.
  static const std::vector<std::string> colors = {"#0072B2", "#E69F00", "#009E73", "#D55E00",
                                                  "#CC79A7", "#56B4E9", "#000000", "#F0E442"};
  return colors;
}

std::vector<double> nice_ticks(double low, double high, int target, bool integer_only) {
  if (!std::isfinite(low) || !std::isfinite(high)) return {0, 1};
  if (low > high) std::swap(low, high);
  if (low == high) {
    const double pad = low == 0 ? 0.5 : std::abs(low) * 0.1;
    low -= pad;
    high += pad;
  }
  const double raw = (high - low) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double residual = raw / magnitude;
  double step = (residual < 1.5 ? 1 : residual < 3 ? 2 : residual < 7 ? 5 : 10) * magnitude;
  if (integer_only) step = std::max(step, 1.0);
  // The small slack keeps 0.6/0.2 = 2.9999999999999996 from adding a tick.
  const double first = std::floor(low / step + 1e-9);
  const double last = std::ceil(high / step - 1e-9);
  std::vector<double> ticks;
  for (double i = first; i <= last; ++i) {
    const double t = i * step;
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
  }
  return ticks;
}

std::vector<double> log_ticks(double low, double high) {
  std::vector<double> ticks;
  if (!(low > 0) || !(high >= low) || !std::isfinite(high)) return ticks;
  const double slack = 1e-9;
  const int first = static_cast<int>(std::floor(std::log10(low) + slack));
  const int last = static_cast<int>(std::ceil(std::log10(high) - slack));
  const bool minor = std::log10(high) - std::log10(low) < 2;
  // Many decades: label every other one, or the labels run together.
  const int every = last - first > 12 ? (last - first + 11) / 12 : 1;
  for (int k = first; k <= last; ++k) {
    for (double m : minor ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
      if (m == 1 && (k - first) % every != 0) continue;
      const double t = m * std::pow(10.0, k);
      if (t >= low * (1 - slack) && t <= high * (1 + slack)) ticks.push_back(t);
    }
  }
  return ticks;
}

std::string tick_label(double value, double step) {
  if (value == 0) return "0";
  if (step == 0) {  // log axis: m × 10^k with m in 1..9
    const int k = static_cast<int>(std::floor(std::log10(std::abs(value)) + 1e-9));
    if (k >= -3 && k <= 3) return fmt::format("{:g}", value);
    const double m = std::round(value / std::pow(10.0, k));
    return fmt::format("{}e{}", static_cast<int>(m), k);
  }
  const double magnitude = std::max(std::abs(value), step);
  if (magnitude >= 1e6 || step < 1e-5) return fmt::format("{:.3g}", value);
  const int decimals = std::max(0, -static_cast<int>(std::floor(std::log10(step) + 1e-9)));
  std::string text = fmt::format("{:.{}f}", value, decimals);
  // "1" rather than "1.0" beside "0.2": no digit that says nothing.
  if (text.find('.') != std::string::npos) {
    text.erase(text.find_last_not_of('0') + 1);
    if (text.back() == '.') text.pop_back();
  }
  return text;
}

std::string render(const Chart& chart) {
  const size_t count = chart.panels.size();
  const size_t columns =
      chart.columns > 0 ? chart.columns : count <= 1 ? 1 : count <= 4 ? 2 : 3;
  const size_t rows = std::max<size_t>(1, (count + columns - 1) / columns);
  const double title_height = chart.title.empty() ? kPad : 40;
  const double width = static_cast<double>(std::min(std::max<size_t>(count, 1), columns)) *
                           chart.panel_width + 2 * kPad;
  const double height = title_height + static_cast<double>(rows) * chart.panel_height + kPad;

  std::string out;
  out += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  out += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"{2}\">\n",
      num(width), num(height), kFont);
  out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!chart.title.empty()) {
    out += fmt::format(
        "<text class=\"title\" x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"{}\" "
        "font-weight=\"bold\" fill=\"#111\">{}</text>\n",
        num(width / 2), kTitleSize, escape(chart.title));
  }
  for (size_t i = 0; i < count; ++i) {
    const double ox = kPad + static_cast<double>(i % columns) * chart.panel_width;
    const double oy = title_height + static_cast<double>(i / columns) * chart.panel_height;
    render_panel(out, chart.panels[i], i, ox, oy, chart.panel_width, chart.panel_height);
  }
  out += "</svg>\n";
  return out;
}

}  // namespace trainloop::svg
