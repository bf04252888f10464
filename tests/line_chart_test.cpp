#include "../src/svg/line_chart.h"
#include "../src/io/files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "trainloop/error.h"

namespace trainloop::svg {
namespace {

namespace fs = std::filesystem;
using testing::ElementsAre;
using testing::HasSubstr;
using testing::ThrowsMessage;

// Parses the SVG with Python's XML parser (so a malformed file fails) and
// summarizes each panel: title, legend texts, tick labels, points per series.
constexpr const char* kSummarize = R"PY(
import json, re, sys
import xml.etree.ElementTree as ET
ns = '{http://www.w3.org/2000/svg}'
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == ns + 'svg', root.tag
def texts(g):
    return [t.text for t in g.iter(ns + 'text')] if g is not None else []
def group(panel, cls):
    return next((g for g in panel.iter(ns + 'g') if g.get('class') == cls), None)
panels = []
for p in root.iter(ns + 'g'):
    if p.get('class') != 'panel':
        continue
    series = {}
    for s in p.iter(ns + 'g'):
        if s.get('class') != 'series':
            continue
        d = ' '.join(path.get('d') for path in s.iter(ns + 'path'))
        series[s.get('data-name')] = {'points': len(re.findall('[ML]', d)),
                                      'segments': d.count('M'),
                                      'dashed': any(path.get('stroke-dasharray') for path in s.iter(ns + 'path'))}
    panels.append({'title': p.get('data-title'), 'legend': texts(group(p, 'legend')),
                   'x_ticks': texts(group(p, 'x-ticks')), 'y_ticks': texts(group(p, 'y-ticks')),
                   'markers': [float(m.get('data-x')) for m in p.iter(ns + 'line') if m.get('class') == 'marker'],
                   'series': series})
title = [t.text for t in root if t.tag == ns + 'text' and t.get('class') == 'title']
print(json.dumps({'title': title[0] if title else '', 'panels': panels}))
)PY";

nlohmann::json summarize(const fs::path& svg) {
  const fs::path script = svg.parent_path() / "summarize.py";
  std::ofstream(script) << kSummarize;
  const std::string command =
      std::string(TRAINLOOP_PYTHON) + " " + script.string() + " " + svg.string();
  std::FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << "the SVG did not parse: " << output;
  return nlohmann::json::parse(output);
}

struct LineChartTest : testing::Test {
  fs::path directory;
  void SetUp() override {
    directory = fs::temp_directory_path() /
                ("line_chart_test_" + std::to_string(::getpid()) + "_" +
                 testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(directory);
    fs::create_directories(directory);
  }
  void TearDown() override { fs::remove_all(directory); }

  nlohmann::json write_and_summarize(const Chart& chart) {
    const fs::path path = directory / "chart.svg";
    io::write_atomically(path.string(), render(chart));
    // Set TRAINLOOP_KEEP_SVG to look at the picture.
    if (const char* keep = std::getenv("TRAINLOOP_KEEP_SVG")) {
      fs::copy_file(path, fs::path(keep) / (std::string(testing::UnitTest::GetInstance()
                                                            ->current_test_info()
                                                            ->name()) +
                                            ".svg"),
                    fs::copy_options::overwrite_existing);
    }
    return summarize(path);
  }
};

TEST(NiceTicksTest, UsesOneTwoFiveSteps) {
  EXPECT_THAT(nice_ticks(0, 1, 5), ElementsAre(0, 0.2, 0.4, 0.6000000000000001, 0.8, 1));
  EXPECT_THAT(nice_ticks(0.13, 0.87, 4), ElementsAre(0, 0.2, 0.4, 0.6000000000000001, 0.8, 1));
  EXPECT_THAT(nice_ticks(2, 97, 5), ElementsAre(0, 20, 40, 60, 80, 100));
  EXPECT_THAT(nice_ticks(-3, 3, 6), ElementsAre(-3, -2, -1, 0, 1, 2, 3));
  EXPECT_THAT(nice_ticks(1, 3, 6, /*integer_only=*/true), ElementsAre(1, 2, 3));
  EXPECT_THAT(nice_ticks(1, 1, 4), ElementsAre(0.9, 0.9500000000000001, 1, 1.05, 1.1));
}

TEST(LogTicksTest, DecadesAndMinorTicks) {
  EXPECT_THAT(log_ticks(1e-7, 10), ElementsAre(1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 10));
  EXPECT_THAT(log_ticks(0.15, 6), ElementsAre(0.2, 0.5, 1, 2, 5));
  EXPECT_TRUE(log_ticks(0, 1).empty());
}

TEST(TickLabelTest, ShowsOnlyTheDigitsTheStepNeeds) {
  EXPECT_EQ(tick_label(0.6000000000000001, 0.2), "0.6");
  EXPECT_EQ(tick_label(1500, 500), "1500");
  EXPECT_EQ(tick_label(0.25, 0.05), "0.25");
  EXPECT_EQ(tick_label(0, 0.2), "0");
  EXPECT_EQ(tick_label(1e-7, 0), "1e-7");
  EXPECT_EQ(tick_label(5e-5, 0), "5e-5");
  EXPECT_EQ(tick_label(0.001, 0), "0.001");
  EXPECT_EQ(tick_label(10, 0), "10");
}

TEST_F(LineChartTest, WellFormedWithLegendTicksAndTitles) {
  Chart chart;
  chart.title = "Training <curves> & more";
  Panel loss;
  loss.title = "loss";
  loss.x_label = "epoch";
  loss.y_label = "loss";
  loss.integer_x = true;
  loss.series.push_back({"training", {1, 2, 3, 4}, {1.0, 0.6, 0.4, 0.3}, false, {}});
  loss.series.push_back({"validation", {1, 2, 3, 4}, {0.9, 0.7, 0.55, 0.5}, true, {}});
  Panel accuracy;
  accuracy.title = "accuracy";
  accuracy.x_label = "epoch";
  accuracy.integer_x = true;
  accuracy.series.push_back({"training", {1, 2, 3, 4}, {0, 0.5, 0.8, 1}, false, {}});
  chart.panels = {loss, accuracy};

  const nlohmann::json summary = write_and_summarize(chart);
  EXPECT_EQ(summary["title"], "Training <curves> & more");
  ASSERT_EQ(summary["panels"].size(), 2u);
  const auto& first = summary["panels"][0];
  EXPECT_EQ(first["title"], "loss");
  EXPECT_EQ(first["legend"], nlohmann::json({"training", "validation"}));
  EXPECT_EQ(first["x_ticks"], nlohmann::json({"1", "2", "3", "4"}));
  EXPECT_EQ(first["series"]["training"]["points"], 4);
  EXPECT_EQ(first["series"]["training"]["dashed"], false);
  EXPECT_EQ(first["series"]["validation"]["dashed"], true);
  EXPECT_EQ(summary["panels"][1]["y_ticks"],
            nlohmann::json({"0", "0.2", "0.4", "0.6", "0.8", "1"}));
}

TEST_F(LineChartTest, DistinctColoursFromTheColourBlindSafePalette) {
  Chart chart;
  Panel panel;
  for (int i = 0; i < 3; ++i) {
    panel.series.push_back({"s" + std::to_string(i), {0, 1}, {0, 1.0 * i}, false, {}});
  }
  chart.panels = {panel};
  const std::string svg = render(chart);
  for (int i = 0; i < 3; ++i) EXPECT_THAT(svg, HasSubstr("stroke=\"" + palette()[i] + "\""));
}

TEST_F(LineChartTest, LogAxisTicksFromOneEMinusSevenToTen) {
  Chart chart;
  Panel panel;
  panel.title = "learning-rate finder";
  panel.x_label = "learning rate";
  panel.y_label = "loss";
  panel.log_x = true;
  std::vector<double> x, y;
  for (int i = 0; i < 100; ++i) {
    x.push_back(1e-7 * std::pow(1e8, i / 99.0));
    y.push_back(2.3 - std::tanh((i - 50) / 15.0) + (i > 90 ? (i - 90) * 0.5 : 0));
  }
  panel.series.push_back({"smoothed loss", x, y, false, {}});
  panel.markers = {{3e-4, "steepest 3e-4"}, {1e-2, "minimum/10 1e-2"}};
  chart.panels = {panel};
  const nlohmann::json summary = write_and_summarize(chart);
  const auto& p = summary["panels"][0];
  EXPECT_EQ(p["x_ticks"], nlohmann::json({"1e-7", "1e-6", "1e-5", "1e-4", "0.001", "0.01",
                                          "0.1", "1", "10"}));
  EXPECT_EQ(p["series"]["smoothed loss"]["points"], 100);
  EXPECT_EQ(p["markers"], nlohmann::json({3e-4, 1e-2}));
  EXPECT_EQ(p["legend"], nlohmann::json({"smoothed loss", "steepest 3e-4", "minimum/10 1e-2"}));
}

TEST_F(LineChartTest, SkipsNonFinitePointsAndBreaksTheLine) {
  Chart chart;
  Panel panel;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  panel.series.push_back({"loss", {1, 2, 3, 4, 5, 6}, {1, nan, 0.5, 0.4, inf, 0.3}, false, {}});
  chart.panels = {panel};
  const std::string svg = render(chart);
  EXPECT_THAT(svg, testing::Not(HasSubstr("nan")));
  EXPECT_THAT(svg, testing::Not(HasSubstr("inf")));
  const fs::path path = directory / "chart.svg";
  io::write_atomically(path.string(), svg);
  const nlohmann::json summary = summarize(path);
  EXPECT_EQ(summary["panels"][0]["series"]["loss"]["points"], 4);
  EXPECT_EQ(summary["panels"][0]["series"]["loss"]["segments"], 3);
}

TEST_F(LineChartTest, EmptyPanelsStillRender) {
  Chart chart;
  Panel panel;
  panel.title = "loss";
  panel.series.push_back({"training", {}, {}, false, {}});
  chart.panels = {panel, panel, panel, panel, panel};
  const nlohmann::json summary = write_and_summarize(chart);
  EXPECT_EQ(summary["panels"].size(), 5u);
  EXPECT_THAT(render(chart), HasSubstr("no data yet"));
}

}  // namespace
}  // namespace trainloop::svg
