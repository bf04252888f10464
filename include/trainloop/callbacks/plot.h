#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>

#include "trainloop/export.h"
#include "trainloop/callback.h"

namespace trainloop::callbacks {

/// Settings for the training-curve plot.
/// Example: `PlotOptions("run/curves.svg").title("LeNet on Fashion-MNIST")`
struct PlotOptions {
  /* implicit */ PlotOptions(std::string path) : path_(std::move(path)) {}
  /// The SVG file, rewritten atomically (temporary file, then rename).
  TORCH_ARG(std::string, path);
  /// Title above the panels; empty for none.
  TORCH_ARG(std::string, title) = "Training curves";
  /// Panels per row; 0 chooses (1 for one metric, 2 up to four, else 3).
  TORCH_ARG(int64_t, columns) = 0;
  /// Size of one panel in pixels.
  TORCH_ARG(double, panel_width) = 460;
  TORCH_ARG(double, panel_height) = 320;
};

/// Draws the training curves to an SVG file that can be watched while the
/// model trains: one panel per metric ("loss", "accuracy", …) with epoch
/// (1-based) on the x axis, training as a solid line and validation as a
/// dashed one. The file is written at fit_start (empty panels; an unwritable
/// directory fails the fit there, naming the path) and rewritten after every
/// epoch, reading each metric once per epoch. State key "plot".
TRAINLOOP_API std::shared_ptr<Callback> plot(PlotOptions options);

/// Draws the same picture from a CSV log as the CSV logger writes it: a
/// header `epoch,batch,phase,step,lr,<metric names...>` (epoch 1-based, phase
/// `train` or `validation`, RFC 4180 quoting, `nan`/`inf` allowed), where the
/// last row of each (epoch, phase) holds that epoch's values. Metric columns
/// named `val_<name>` are validation values of `<name>`; empty cells are
/// missing values. Throws `Error` naming file, line and column, e.g.
///   run/log.csv:7:6: "abc" in column "loss" is not a number
/// Example: `plot_csv_log("run/log.csv", "run/curves.svg")`
TRAINLOOP_API void plot_csv_log(const std::string& csv_path, const PlotOptions& options);

}  // namespace trainloop::callbacks
