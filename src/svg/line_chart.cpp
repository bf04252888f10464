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

const std::string& color_of(size_t position, const std::optional<size_t>& chosen) {
  const auto& colors = palette();
  return colors[chosen.value_or(position) % colors.size()];
}

bool usable_marker(const Marker& marker, bool log_x) {
  return std::isfinite(marker.x) && (!log_x || marker.x > 0);
}

// What a panel's data spans, before the axes round it.
struct Extent {
  Range x, y;
  size_t most_points = 0;
  bool has_data = false;
};

Extent extent_of(const Panel& panel) {
  Extent extent;
  for (const auto& s : panel.series) {
    const size_t n = std::min(s.x.size(), s.y.size());
    extent.most_points = std::max(extent.most_points, n);
    for (size_t i = 0; i < n; ++i) {
      if (!usable(s.x[i], s.y[i], panel.log_x)) continue;
      extent.x.add(s.x[i]);
      extent.y.add(s.y[i]);
    }
  }
  for (const auto& m : panel.markers) {
    if (usable_marker(m, panel.log_x)) extent.x.add(m.x);
  }
  extent.has_data = !extent.y.empty();
  return extent;
}

// One axis: its drawn range, its ticks and their step (0 on a log axis).
struct Axis {
  double low = 0, high = 1;
  std::vector<double> ticks;
  double step = 0;
};

void drop_ticks(std::vector<double>& ticks, double low, double high, double slack) {
  ticks.erase(std::remove_if(ticks.begin(), ticks.end(),
                             [&](double t) { return t < low - slack || t > high + slack; }),
              ticks.end());
}

// The y axis extends to whole ticks, unless the panel fixes an end.
Axis y_axis(const Panel& panel, Range range) {
  if (panel.y_min) range.low = *panel.y_min;
  if (panel.y_max) range.high = *panel.y_max;
  if (range.empty()) range = Range{0, 1};
  if (range.low == range.high) {
    const double pad = range.low == 0 ? 0.5 : std::abs(range.low) * 0.1;
    range.low -= pad;
    range.high += pad;
  }
  Axis axis;
  axis.ticks = nice_ticks(range.low, range.high, 5);
  axis.step = axis.ticks.size() > 1 ? axis.ticks[1] - axis.ticks[0] : 1;
  const double inf = std::numeric_limits<double>::infinity();
  drop_ticks(axis.ticks, panel.y_min.value_or(-inf), panel.y_max.value_or(inf), 1e-9 * axis.step);
  axis.low = panel.y_min ? *panel.y_min : axis.ticks.front();
  axis.high = panel.y_max ? *panel.y_max : axis.ticks.back();
  return axis;
}

// The x axis keeps the data's range (its ticks fall inside), as a curve
// should start at the first epoch.
Axis x_axis(const Panel& panel, Range range, double width) {
  if (range.empty()) {
    range = panel.log_x ? Range{1e-3, 1}
                        : Range{panel.integer_x ? 1.0 : 0.0, panel.integer_x ? 2.0 : 1.0};
  }
  Axis axis{range.low, range.high, {}, 0};
  if (panel.log_x) {
    if (axis.low == axis.high) {
      axis.low /= 3;
      axis.high *= 3;
    }
    axis.ticks = log_ticks(axis.low, axis.high);
    return axis;
  }
  if (axis.low == axis.high) {
    const double pad = panel.integer_x ? 0.5 : (axis.low == 0 ? 0.5 : std::abs(axis.low) * 0.1);
    axis.low -= pad;
    axis.high += pad;
  }
  axis.ticks = nice_ticks(axis.low, axis.high, std::max(2, static_cast<int>(width / 80)),
                          panel.integer_x);
  axis.step = axis.ticks.size() > 1 ? axis.ticks[1] - axis.ticks[0] : 1;
  drop_ticks(axis.ticks, axis.low, axis.high, 1e-9 * axis.step);
  // A little room at both ends, so the first and last dots do not sit on
  // the frame.
  const double inset = 0.03 * (axis.high - axis.low);
  axis.low -= inset;
  axis.high += inset;
  return axis;
}

// Legend items: the series, then the markers.
struct Legend {
  std::vector<std::string> names;
  std::vector<double> widths;
};

Legend legend_of(const Panel& panel) {
  Legend legend;
  for (const auto& s : panel.series) legend.names.push_back(s.name);
  for (const auto& m : panel.markers) legend.names.push_back(m.label);
  for (const auto& name : legend.names) {
    legend.widths.push_back(28 + text_width(name, kLegendSize) + 18);
  }
  return legend;
}

// Where a panel's parts go, in pixels, and how data maps there.
struct Frame {
  double ox, oy, width, height;  // the panel's cell of the chart
  double left, right, top, bottom;  // the plot area
  double legend_top;
  Scale sx, sy;
};

Frame frame_of(const Panel& panel, const Axis& x, const Axis& y, double y_label_width,
               const Legend& legend, double ox, double oy, double width, double height) {
  Frame f{ox, oy, width, height, 0, 0, 0, 0, 0, {}, {}};
  f.left = ox + 8 + (panel.y_label.empty() ? 0 : kAxisTitleSize + 10) + y_label_width + 8;
  f.right = ox + width - 22;
  f.legend_top = oy + 32;
  const size_t rows = legend_rows(legend.widths, f.right - f.left);
  f.top = f.legend_top + static_cast<double>(rows) * kLegendRow + 10;
  f.bottom = oy + height - 16 - kTickSize - (panel.x_label.empty() ? 0 : kAxisTitleSize + 10);
  f.sx = Scale{panel.log_x ? std::log10(x.low) : x.low, panel.log_x ? std::log10(x.high) : x.high,
               f.left, f.right, panel.log_x};
  f.sy = Scale{y.low, y.high, f.bottom, f.top, false};
  return f;
}

void render_heading(std::string& out, const Panel& panel, size_t index, const Frame& f) {
  out += fmt::format("<g class=\"panel\" data-title=\"{}\">\n", escape(panel.title));
  out += fmt::format(
      "<clipPath id=\"plot-area-{}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n",
      index, num(f.left - 5), num(f.top - 5), num(f.right - f.left + 10), num(f.bottom - f.top + 10));
  // Centred over the plot area.
  out += fmt::format(
      "<text class=\"panel-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" "
      "font-weight=\"bold\" fill=\"#222\">{}</text>\n",
      num((f.left + f.right) / 2), num(f.oy + 20), kPanelTitleSize, escape(panel.title));
}

void render_y_ticks(std::string& out, const Axis& y, const std::vector<std::string>& labels,
                    const Frame& f) {
  out += "<g class=\"y-ticks\" font-size=\"" + fmt::format("{}", kTickSize) +
         "\" fill=\"#444\" text-anchor=\"end\">\n";
  for (size_t i = 0; i < y.ticks.size(); ++i) {
    const double at = f.sy(y.ticks[i]);
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e6e6\"/>",
                       num(f.left), num(f.right), num(at), num(at));
    out += fmt::format("<text x=\"{}\" y=\"{}\" dy=\"0.35em\">{}</text>\n", num(f.left - 7),
                       num(at), escape(labels[i]));
  }
  out += "</g>\n";
}

void render_x_ticks(std::string& out, const Axis& x, const Frame& f) {
  out += "<g class=\"x-ticks\" font-size=\"" + fmt::format("{}", kTickSize) +
         "\" fill=\"#444\" text-anchor=\"middle\">\n";
  double last_label_end = -std::numeric_limits<double>::infinity();
  for (double t : x.ticks) {
    const double at = f.sx(t);
    const std::string label = tick_label(t, x.step);
    out += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e6e6\"/>",
                       num(at), num(at), num(f.top), num(f.bottom));
    // A label that would touch its neighbour is left out; the grid line stays.
    const double half = text_width(label, kTickSize) / 2;
    if (at - half > last_label_end + 6) {
      out += fmt::format("<text x=\"{}\" y=\"{}\" dy=\"0.8em\">{}</text>", num(at),
                         num(f.bottom + 6), escape(label));
      last_label_end = at + half;
    }
    out += "\n";
  }
  out += "</g>\n";
}

void render_axes(std::string& out, const Panel& panel, const Frame& f) {
  out += fmt::format(
      "<path class=\"axes\" d=\"M{},{} V{} H{}\" fill=\"none\" stroke=\"#555\" stroke-width=\"1\"/>\n",
      num(f.left), num(f.top), num(f.bottom), num(f.right));
  if (!panel.x_label.empty()) {
    out += fmt::format(
        "<text class=\"x-title\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" "
        "fill=\"#222\">{}</text>\n",
        num((f.left + f.right) / 2), num(f.oy + f.height - 10), kAxisTitleSize,
        escape(panel.x_label));
  }
  if (!panel.y_label.empty()) {
    const double x = f.ox + 8 + kAxisTitleSize;
    const double y = (f.top + f.bottom) / 2;
    out += fmt::format(
        "<text class=\"y-title\" x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\" "
        "text-anchor=\"middle\" font-size=\"{}\" fill=\"#222\">{}</text>\n",
        num(x), num(y), num(x), num(y), kAxisTitleSize, escape(panel.y_label));
  }
}

void render_no_data(std::string& out, const Frame& f) {
  out += fmt::format(
      "<text class=\"no-data\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"{}\" "
      "fill=\"#999\">no data yet</text>\n",
      num((f.left + f.right) / 2), num((f.top + f.bottom) / 2), kAxisTitleSize);
}

void render_markers(std::string& out, const Panel& panel, const Frame& f) {
  for (size_t k = 0; k < panel.markers.size(); ++k) {
    const auto& m = panel.markers[k];
    if (!usable_marker(m, panel.log_x)) continue;
    const double x = f.sx(m.x);
    out += fmt::format(
        "<line class=\"marker\" data-x=\"{}\" x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" "
        "stroke-width=\"1.5\" stroke-dasharray=\"2 3\"/>\n",
        m.x, num(x), num(x), num(f.top), num(f.bottom),
        color_of(panel.series.size() + k, std::nullopt));
  }
}

void render_series(std::string& out, const Series& s, const std::string& color, bool log_x,
                   bool dots, const Frame& f) {
  out += fmt::format("<g class=\"series\" data-name=\"{}\">\n", escape(s.name));
  std::string path;
  std::string circles;
  bool pen_down = false;
  const size_t n = std::min(s.x.size(), s.y.size());
  for (size_t i = 0; i < n; ++i) {
    if (!usable(s.x[i], s.y[i], log_x)) {
      pen_down = false;  // a gap, not a line across the missing point
      continue;
    }
    const double x = f.sx(s.x[i]), y = f.sy(s.y[i]);
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

// Markers and series, clipped to the plot area (a fixed y range may cut a spike).
void render_lines(std::string& out, const Panel& panel, size_t index, bool dots, const Frame& f) {
  out += fmt::format("<g class=\"lines\" clip-path=\"url(#plot-area-{})\">\n", index);
  render_markers(out, panel, f);
  for (size_t k = 0; k < panel.series.size(); ++k) {
    const auto& s = panel.series[k];
    render_series(out, s, color_of(k, s.color), panel.log_x, dots, f);
  }
  out += "</g>\n";
}

// Legend rows above the plot area, so it never hides a line.
void render_legend(std::string& out, const Panel& panel, const Legend& legend, bool dots,
                   const Frame& f) {
  out += fmt::format("<g class=\"legend\" font-size=\"{}\" fill=\"#222\">\n", kLegendSize);
  double x = f.left, y = f.legend_top + kLegendRow / 2;
  for (size_t k = 0; k < legend.names.size(); ++k) {
    if (x > f.left && x + legend.widths[k] > f.right) {
      x = f.left;
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
                       escape(legend.names[k]));
    x += legend.widths[k];
  }
  out += "</g>\n";
}

void render_panel(std::string& out, const Panel& panel, size_t index, double ox, double oy,
                  double width, double height) {
  const Extent extent = extent_of(panel);
  const Axis y = y_axis(panel, extent.y);
  const Axis x = x_axis(panel, extent.x, width);
  std::vector<std::string> y_labels;
  double y_label_width = 0;
  for (double t : y.ticks) {
    y_labels.push_back(tick_label(t, y.step));
    y_label_width = std::max(y_label_width, text_width(y_labels.back(), kTickSize));
  }
  const Legend legend = legend_of(panel);
  const Frame frame = frame_of(panel, x, y, y_label_width, legend, ox, oy, width, height);
  // Series with few points get a dot per point.
  const bool dots = extent.most_points <= kMaxDotted;

  render_heading(out, panel, index, frame);
  render_y_ticks(out, y, y_labels, frame);
  render_x_ticks(out, x, frame);
  render_axes(out, panel, frame);
  if (!extent.has_data) render_no_data(out, frame);
  render_lines(out, panel, index, dots, frame);
  render_legend(out, panel, legend, dots, frame);
  out += "</g>\n";
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
