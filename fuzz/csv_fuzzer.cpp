// Any text, read as a CSV table under option sets picked by the first byte,
// or as scikit-learn's bundled format, gives a table or a trainloop::Error
// naming the line and column.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "trainloop/data/csv.h"
#include "trainloop/error.h"

namespace tl = trainloop::data;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  tl::CsvOptions options(mode & 1 ? "label" : "");
  if (mode & 2) options.header(false).label("1");
  if (mode & 4) options.drop({"Id"});
  if (mode & 8) options.labels(tl::Labels::regression);
  if (mode & 16) options.missing(tl::MissingValues::fill_mean);
  if (mode & 32) options.missing(tl::MissingValues::drop_row);
  if (mode & 64) options.delimiter(';');
  // Small limits, so the limits' own checks are reached too.
  options.max_columns(64).max_classes(16).max_bytes(1 << 16);
  try {
    if (mode & 128) {
      tl::parse_sklearn_csv(text, "input.csv");
    } else {
      tl::parse_csv_table(text, "input.csv", options);
    }
  } catch (const trainloop::Error&) {
  }
  return 0;
}
