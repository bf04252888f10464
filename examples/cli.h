#pragma once

// Command-line helpers shared by the char_gpt and resnet examples: one line
// on stderr and exit code 2 for any usage error, as the demo does.

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

namespace trainloop::examples {

/// Exit code for anything wrong on the command line.
constexpr int kUsageError = 2;
/// Exit code for a failure while running (bad data, a failed write, …).
constexpr int kRunError = 1;

/// A positive number; CLI11's PositiveNumber prints a 300-digit range for a non-number.
inline const CLI::Validator kPositive(
    [](std::string& text) -> std::string {
      char* end = nullptr;
      const double value = std::strtod(text.c_str(), &end);
      if (end == text.c_str() || *end != '\0' || !(value > 0)) {
        return "expected a positive number, found \"" + text + "\"";
      }
      return "";
    },
    "POSITIVE");

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
