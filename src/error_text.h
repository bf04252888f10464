#pragma once

// What trainloop's one-line errors quote: an exception's first line, a
// shape, a system error. Private to the library.

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <cstring>
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

/// A shape as errors show it, e.g. "[2, 4]".
inline std::string sizes_text(c10::ArrayRef<int64_t> sizes) {
  return fmt::format("[{}]", fmt::join(sizes, ", "));
}

/// The system's text for an errno value.
inline std::string errno_text(int code) { return std::strerror(code); }

}  // namespace trainloop::detail
