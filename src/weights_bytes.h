#pragma once

// A model's weights as the bytes of a state-dict file, and back: what
// save_weights and load_weights do without the file, for a checkpoint, which
// reads and checks its files itself. Private to the library.

#include <string>
#include <string_view>

#include "trainloop/model.h"

namespace trainloop::detail {

/// The model's parameters and buffers as a state-dict file's bytes (see
/// `save_weights`). `target` names the file in an error.
std::string weights_bytes(const Model& model, const std::string& target);

/// Copies the state dict in `bytes` into the model in place (an optimizer
/// built on the model keeps referring to the same tensors). Everything is
/// checked first, so a mismatch leaves the model as it was; `source` names
/// the file in an error.
void apply_weights(const Model& model, std::string_view bytes, const std::string& source);

}  // namespace trainloop::detail
