// What the tabular examples share: the flags that name a CSV table, reading
// it, a multilayer perceptron, and one-line usage errors.
#pragma once

#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"  // kUsageError, the number validators

namespace trainloop::examples {

/// scikit-learn's bundled tables, as Debian installs them.
inline const std::string kSklearnData = "/usr/lib/python3/dist-packages/sklearn/datasets/data/";

/// The table a run reads: the --csv, --label, --drop, --no-header and
/// --skip-lines flags.
struct TableFlags {
  /// `default_csv` is --csv's default.
  explicit TableFlags(std::string default_csv) : csv(std::move(default_csv)) {}

  std::string csv;
  std::string label;
  std::vector<std::string> drop;
  bool no_header = false;
  int64_t skip_lines = 0;
};

/// Adds the table flags to `app`; `flags.csv` holds the default path.
inline void add_table_flags(CLI::App& app, TableFlags& flags) {
  app.add_option("--csv", flags.csv, "CSV table (.csv or .csv.gz)")->capture_default_str();
  app.add_option("--label", flags.label,
                 "name of the label column; without it --csv is read as one of scikit-learn's "
                 "bundled tables (first line: n_samples,n_features,class names; the label last)");
  app.add_option("--drop", flags.drop, "columns to ignore, e.g. --drop Id");
  app.add_flag("--no-header", flags.no_header,
               "the table has no header row: columns are named 1, 2, ... (with --label)");
  app.add_option("--skip-lines", flags.skip_lines, "lines to skip before the header (with --label)")
      ->check(CLI::Range(int64_t{0}, int64_t{1000000}));
}

/// What is wrong with the table flags together, or "" when nothing is.
inline std::string table_flags_problem(const TableFlags& flags) {
  if (flags.label.empty() && (!flags.drop.empty() || flags.no_header || flags.skip_lines != 0)) {
    return "--drop, --no-header and --skip-lines need --label (a scikit-learn bundled table has "
           "a fixed layout)";
  }
  return "";
}

/// Reads the table the flags name; throws `Error` naming file, line and
/// column for bad input.
inline data::CsvTable read_table(const TableFlags& flags) {
  if (flags.label.empty()) return data::read_sklearn_csv(flags.csv);
  return data::read_csv_table(flags.csv, data::CsvOptions(flags.label)
                                             .drop(flags.drop)
                                             .header(!flags.no_header)
                                             .skip_lines(flags.skip_lines));
}

/// A multilayer perceptron: Linear and ReLU for each hidden width, then a
/// Linear layer to `outputs`.
inline torch::nn::Sequential mlp(int64_t inputs, const std::vector<int64_t>& hidden,
                                 int64_t outputs) {
  torch::nn::Sequential net;
  int64_t width = inputs;
  for (const int64_t units : hidden) {
    net->push_back(torch::nn::Linear(width, units));
    net->push_back(torch::nn::ReLU());
    width = units;
  }
  net->push_back(torch::nn::Linear(width, outputs));
  return net;
}

/// Prints one line `<program>: <message> (see --help)` to stderr; returns 2.
inline int usage_error(const CLI::App& app, const std::string& message) {
  std::fprintf(stderr, "%s: %s (see --help)\n", app.get_name().c_str(), message.c_str());
  return kUsageError;
}

/// Parses the command line: -1 to go on, else the exit code (0 after
/// printing --help, 2 after a one-line usage error).
inline int parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    if (const auto newline = message.find('\n'); newline != std::string::npos) {
      message.resize(newline);
    }
    return usage_error(app, message);
  }
  return -1;
}

/// The first line of an error message: what main prints before exiting 1.
inline std::string first_line(const std::exception& e) {
  std::string message = e.what();
  if (const auto newline = message.find('\n'); newline != std::string::npos) {
    message.resize(newline);
  }
  return message;
}

}  // namespace trainloop::examples
