#pragma once

// Command-line helpers shared by the examples: one line on stderr and exit
// code 2 for any usage error, and validators that refuse NaN, infinities and
// values that overflow the type a flag is used as.

#include <CLI/CLI.hpp>
#include <torch/torch.h>
#include <trainloop/error.h>
#include <trainloop/precision.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>

namespace trainloop::examples {

/// Exit code for anything wrong on the command line.
constexpr int kUsageError = 2;
/// Exit code for a failure while running (bad data, a failed write, …).
constexpr int kRunError = 1;

namespace detail {

// "a number from 0 to 1", "a positive number up to 3.40282e+38".
inline std::string range_text(double min, double max, bool positive) {
  char text[96];
  if (positive) {
    std::snprintf(text, sizeof text, "a positive number up to %g", max);
  } else {
    std::snprintf(text, sizeof text, "a number from %g to %g", min, max);
  }
  return text;
}

// What is wrong with `text` as a finite number in [min, max] ((0, max] when
// `positive`); empty when nothing is. NaN passes CLI11's Range (every
// comparison with it is false) and "inf", "nan" and "1e400" parse as doubles,
// so each is named here.
inline std::string number_problem(const std::string& text, double min, double max,
                                  bool positive) {
  const std::string expected = ", expected " + range_text(min, max, positive);
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0') return "\"" + text + "\" is not a number" + expected;
  if (std::isnan(value)) return text + " is not a number" + expected;
  if (std::isinf(value)) return text + " is infinite" + expected;
  if (errno == ERANGE && value != 0) return text + " is out of range of a double" + expected;
  if (positive ? !(value > 0) || value > max : value < min || value > max) {
    return text + " is out of range" + expected;
  }
  return "";
}

}  // namespace detail

/// A finite number from `min` to `max`. Refuses NaN, infinities and values
/// past `max`, naming the flag (CLI11 prefixes its name), where CLI11's Range
/// lets NaN through.
inline CLI::Validator finite_range(double min, double max) {
  return CLI::Validator(
      [=](std::string& text) { return detail::number_problem(text, min, max, false); },
      detail::range_text(min, max, false));
}

/// A finite positive number, at most `max`: by default the largest float, as
/// LibTorch applies a learning rate (or a temperature) to float tensors and
/// fails on one that overflows a float.
inline CLI::Validator finite_positive(double max = std::numeric_limits<float>::max()) {
  return CLI::Validator(
      [=](std::string& text) { return detail::number_problem(text, 0, max, true); },
      detail::range_text(0, max, true));
}

/// A positive number; CLI11's PositiveNumber prints a 300-digit range for a
/// non-number. Finite and at most the largest float (see finite_positive).
inline const CLI::Validator kPositive = finite_positive();

/// A whole number from 0 to 2^64 - 1, for --seed: CLI11 reads "-1" as
/// 18446744073709551615 and a number past the type as its largest value.
inline const CLI::Validator kSeed(
    [](std::string& text) -> std::string {
      const std::string expected = ", expected a whole number from 0 to " +
                                   std::to_string(std::numeric_limits<uint64_t>::max());
      const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
      if (!digits && text.size() > 1 && text[0] == '-' &&
          text.find_first_not_of("0123456789", 1) == std::string::npos) {
        return text + " is negative" + expected;
      }
      if (!digits) return "\"" + text + "\" is not a whole number" + expected;
      errno = 0;
      std::strtoull(text.c_str(), nullptr, 10);
      if (errno == ERANGE) return text + " is out of range" + expected;
      return "";
    },
    "UINT64");

/// Checks --precision with the library's own parser (fp32, bf16, fp16 and
/// their long names), refused at parse time with one line naming the flag
/// (CLI11 prefixes its name) and the accepted names.
inline const CLI::Validator kPrecision(
    [](std::string& text) -> std::string {
      try {
        trainloop::parse_precision(text);
        return "";
      } catch (const trainloop::Error&) {
        return "\"" + text + "\" is not a precision, expected fp32, bf16 or fp16";
      }
    },
    "{fp32,bf16,fp16}");

/// Adds --precision (default fp32) to `app`, read into `precision`; apply it
/// with `loop.mixed_precision(trainloop::parse_precision(precision))`. A
/// precision that this LibTorch cannot autocast to on the device (float16 on
/// the CPU before LibTorch 2.4) is the library's `Error` when fit starts.
inline CLI::Option* add_precision_flag(CLI::App& app, std::string& precision) {
  return app
      .add_option("--precision", precision,
                  "fp32, or bf16 / fp16: mixed precision, each step's forward and loss under "
                  "autocast to that type, the weights float32 (fp16 with loss scaling; on the "
                  "CPU it needs LibTorch 2.4 or newer)")
      ->check(kPrecision)
      ->capture_default_str();
}

/// What is wrong with `path` as an output directory that the program will
/// create: empty when nothing is. Checked before any file is touched, so the
/// user reads one line naming the path instead of a raw filesystem_error.
inline std::string output_directory_problem(const std::string& path) {
  namespace fs = std::filesystem;
  constexpr size_t kMaxPath = PATH_MAX - 1;  // the terminating zero counts
  constexpr size_t kMaxName = NAME_MAX;
  if (path.empty()) return "empty, expected the path of a directory";
  if (path.size() > kMaxPath) {
    return "a path of " + std::to_string(path.size()) + " characters, expected at most " +
           std::to_string(kMaxPath);
  }
  for (const auto& part : fs::path(path)) {
    if (part.native().size() > kMaxName) {
      return "\"" + part.native().substr(0, 20) + "…\", a name of " +
             std::to_string(part.native().size()) + " characters in the path, expected at most " +
             std::to_string(kMaxName) + " each";
    }
  }
  // The path, or the nearest of its parents that exists, must be a directory.
  std::error_code error;
  for (fs::path at = path; !at.empty(); at = at.parent_path()) {
    const fs::file_status status = fs::status(at, error);
    if (status.type() == fs::file_type::none) return "";  // unreadable: creating it will say why
    if (status.type() == fs::file_type::not_found) {
      if (at == at.parent_path()) break;
      continue;
    }
    if (fs::is_directory(status)) return "";
    const std::string what = fs::is_regular_file(status) ? "a regular file" : "not a directory";
    if (at == fs::path(path)) return path + " exists and is " + what + ", expected a directory";
    return at.string() + " is " + what + ", expected a directory to hold " + path;
  }
  return "";
}

/// Checks an output-directory flag (--out) with output_directory_problem.
inline const CLI::Validator kOutputDirectory(
    [](std::string& path) { return output_directory_problem(path); }, "DIR");

/// Prints "<program>: <message> (see --help)" on stderr and returns kUsageError.
inline int usage_error(const char* program, const std::string& message) {
  std::fprintf(stderr, "%s: %s (see --help)\n", program, message.c_str());
  return kUsageError;
}

/// Parses the command line. Returns an exit code when the program should
/// stop: 0 after --help, kUsageError (and one line on stderr) for bad flags.
inline std::optional<int> parse(CLI::App& app, int argc, char** argv, const char* program) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    if (const auto newline = message.find('\n'); newline != std::string::npos) message.resize(newline);
    return usage_error(program, message);
  }
  return std::nullopt;
}

/// The device named by --device, or a usage error's exit code.
inline std::optional<int> parse_device(const std::string& name, const char* program,
                                       torch::Device& device) {
  try {
    device = torch::Device(name);
  } catch (const std::exception&) {
    return usage_error(program, "--device: \"" + name + "\" is not a device; expected cpu, cuda or cuda:N");
  }
  if (device.is_cuda() && !torch::cuda::is_available()) {
    return usage_error(program, "--device: " + name + " requested, but this LibTorch sees no CUDA device");
  }
  return std::nullopt;
}

/// Prints "<program>: <what>" on stderr, on one line, and returns
/// kRunError. A LibTorch error gives its first line, without the C++ stack.
inline int run_error(const char* program, const std::exception& e) {
  std::string message = e.what();
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) {
    message = torch_error->what_without_backtrace();
    if (const auto newline = message.find('\n'); newline != std::string::npos) message.resize(newline);
  }
  for (auto at = message.find('\n'); at != std::string::npos; at = message.find('\n', at)) {
    message.replace(at, 1, "; ");
  }
  std::fprintf(stderr, "%s: %s\n", program, message.c_str());
  return kRunError;
}

}  // namespace trainloop::examples
