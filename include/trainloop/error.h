#pragma once

#include <stdexcept>
#include <string>

#include "trainloop/export.h"

namespace trainloop {

/// The one exception type trainloop throws for bad input or misuse.
/// Its message names the file, line, field or argument and what was expected,
/// e.g. `train-images-idx3-ubyte.gz: magic 0x00000000, expected 0x00000803`.
class TRAINLOOP_API Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace trainloop
