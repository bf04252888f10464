#pragma once

// An exception's message as trainloop's one-line errors quote it. Private
// to the library.

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace trainloop::detail {

/// The first line of `error`'s message; for a LibTorch error, without its
/// C++ stack trace.
inline std::string first_line(const std::exception& error) {
  const auto* torch_error = dynamic_cast<const c10::Error*>(&error);
  std::string text = torch_error ? torch_error->what_without_backtrace() : error.what();
  if (const size_t end = text.find('\n'); end != std::string::npos) text.resize(end);
  return text;
}

}  // namespace trainloop::detail
