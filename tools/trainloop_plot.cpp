// trainloop-plot: draws training curves from a CSV log written by
// callbacks::csv_logger, the same picture callbacks::plot draws during a fit.
//
//   trainloop-plot run/log.csv -o run/curves.svg
//
// Exit status: 0 on success, 1 when the log cannot be read or the SVG cannot
// be written (one line on stderr naming file, line and column), 2 for bad
// command-line arguments.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

#include "trainloop/callbacks/plot.h"
#include "trainloop/error.h"

int main(int argc, char** argv) {
  CLI::App app("Draws training curves (SVG) from a trainloop CSV log.", "trainloop-plot");
  std::string log_path;
  std::string svg_path;
  std::string title = "Training curves";
  int64_t columns = 0;
  app.add_option("log", log_path, "CSV log written by callbacks::csv_logger")->required();
  app.add_option("-o,--output", svg_path, "SVG file to write (default: the log's path with .svg)");
  app.add_option("-t,--title", title, "title above the panels (empty for none)");
  app.add_option("-c,--columns", columns, "panels per row (default: chosen by the panel count)")
      ->check(CLI::NonNegativeNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  if (svg_path.empty()) svg_path = std::filesystem::path(log_path).replace_extension(".svg").string();
  try {
    trainloop::callbacks::plot_csv_log(
        log_path, trainloop::callbacks::PlotOptions(svg_path).title(title).columns(columns));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trainloop-plot: %s\n", e.what());
    return 1;
  }
  return 0;
}
