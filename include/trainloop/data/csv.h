#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/data/tensor_dataset.h"

namespace trainloop::data {

/// What the CSV reader does with a missing value: an empty cell, or one
/// that equals one of `CsvOptions::missing_markers`.
enum class MissingValues {
  /// Throw `Error` naming the file, line and column (default).
  error,
  /// Leave out every row with a missing value in a feature or the label
  /// column; `CsvTable::dropped_rows` counts them.
  drop_row,
  /// Replace a missing feature with the mean of its column's present values
  /// over all rows read (before any split: for a test set kept apart, drop
  /// or fill later). A missing label is still an error.
  fill_mean,
};

/// How the label column becomes targets.
enum class Labels {
  /// int64 class indices 0..K-1 in the order of the sorted distinct labels,
  /// like scikit-learn's LabelEncoder: numerically when every label is a
  /// number ("2" < "10", and "1" and "1.0" are one class), otherwise bytewise
  /// as text. Labels 0..K-1, all present, thus stay as they are. With
  /// `CsvOptions::class_names`, class i is the label equal to name i instead.
  classes,
  /// int64: the cells are class indices already, whole numbers from 0; K is
  /// the number of `class_names` when given, else the largest index + 1.
  class_indices,
  /// float32 values, for regression.
  regression,
};

/// Settings for reading a CSV table. Column names are the header's (spaces
/// and tabs around them ignored), or the 1-based column numbers "1", "2", …
/// with `header(false)`.
/// Example: `CsvOptions("Species").drop({"Id"})`
struct CsvOptions {
  /// Options for a table without a label column.
  CsvOptions() = default;
  /// Options for a table whose label column is named `label`.
  /* implicit */ CsvOptions(std::string label) : label_(std::move(label)) {}

  /// Name of the label column; empty for none (targets left undefined).
  TORCH_ARG(std::string, label);
  /// Feature columns in this order; empty (default): every column that is
  /// neither the label nor dropped, in file order.
  TORCH_ARG(std::vector<std::string>, features) = {};
  /// Columns to ignore, e.g. `{"Id"}`; their cells are not read at all.
  TORCH_ARG(std::vector<std::string>, drop) = {};
  /// How the label column becomes targets.
  TORCH_ARG(Labels, labels) = Labels::classes;
  /// Names of the classes in index order (see `Labels`); empty: from the data.
  TORCH_ARG(std::vector<std::string>, class_names) = {};
  /// Whether the first row (after `skip_lines`) names the columns.
  TORCH_ARG(bool, header) = true;
  /// Physical lines to skip before the header (or the first row).
  TORCH_ARG(int64_t, skip_lines) = 0;
  /// The cell separator; not a quote, CR or LF.
  TORCH_ARG(char, delimiter) = ',';
  /// What to do with missing values.
  TORCH_ARG(MissingValues, missing) = MissingValues::error;
  /// Cell values that mean "missing" besides the empty cell.
  TORCH_ARG(std::vector<std::string>, missing_markers) = {"NA", "NaN", "nan", "?"};
  /// Most columns a table may have; more fails at the header.
  TORCH_ARG(int64_t, max_columns) = 100000;
  /// Most classes `Labels::classes` and `class_indices` accept, so that a
  /// regression target read as classes fails with a hint instead of making
  /// thousands of classes.
  TORCH_ARG(int64_t, max_classes) = 1000;
  /// Most bytes of text (after decompression); more fails.
  TORCH_ARG(int64_t, max_bytes) = int64_t{1} << 30;
};

/// A table read from CSV: the dataset and the names that go with it.
struct CsvTable {
  /// inputs float32 `[N, F]`; targets int64 `[N]` (classes), float32 `[N]`
  /// (regression), or undefined (no label column).
  TensorDataset dataset;
  /// Names of the F feature columns, in the order of `inputs`' columns.
  std::vector<std::string> feature_names;
  /// Name of the label column; empty when there is none.
  std::string label_name;
  /// Name of each class index, e.g. {"setosa", "versicolor", "virginica"}:
  /// the label text, the shortest form of a numeric label ("1" for "1.0"), or
  /// the given `class_names`. Empty for regression or without a label.
  std::vector<std::string> class_names;
  /// The physical line (1-based) each example starts on, e.g. to name a
  /// prediction's row.
  std::vector<int64_t> lines;
  /// Rows left out by `MissingValues::drop_row`.
  int64_t dropped_rows = 0;
};

/// Parses CSV text (RFC 4180: quoted cells with doubled quotes, delimiters
/// and line breaks inside quotes; LF, CRLF or CR line ends; a UTF-8 BOM and
/// blank lines ignored) into a table. Spaces and tabs around a cell are
/// ignored, also inside quotes; a quote inside an unquoted cell is text.
/// Numbers are read with `std::from_chars`, the same in every locale (a
/// leading '+' allowed); they must be finite and fit float32. `source_name`
/// names the text in errors.
/// Throws `Error` for ragged rows, text where a number is expected, missing
/// values (by default), unknown column names, an unterminated quote, no
/// header, no rows, or input past the limits; the message names the source,
/// the physical line and the column, e.g.
///   wine.csv:7:3: "abc" in column 3 "ash" is not a number, expected a number
/// Never crashes, hangs or allocates more than a small multiple of the text's
/// size, whatever the bytes.
TRAINLOOP_API CsvTable parse_csv_table(std::string_view text, const std::string& source_name,
                                       const CsvOptions& options = {});

/// Reads a CSV file (gzip-compressed when the name ends in ".gz") with
/// `parse_csv_table`. A missing or unreadable file gives `Error` naming it.
/// Example: `read_csv_table("Iris.csv", CsvOptions("Species").drop({"Id"}))`
TRAINLOOP_API CsvTable read_csv_table(const std::string& path, const CsvOptions& options = {});

/// Parses a table in the format of scikit-learn's bundled classification
/// CSVs (iris.csv, wine_data.csv, breast_cancer.csv): a first line
/// `n_samples,n_features,<class names...>`, then rows of n_features numbers
/// and a class index. Features are named "1" … "n_features", the label
/// column "n_features + 1"; class names come from the first line. Checks the
/// counts against the rows and throws `Error` naming the line otherwise.
TRAINLOOP_API CsvTable parse_sklearn_csv(std::string_view text, const std::string& source_name);

/// Reads a scikit-learn bundled classification CSV (see `parse_sklearn_csv`).
/// Example: `read_sklearn_csv("/usr/lib/python3/dist-packages/sklearn/datasets/data/wine_data.csv")`
TRAINLOOP_API CsvTable read_sklearn_csv(const std::string& path);

}  // namespace trainloop::data
