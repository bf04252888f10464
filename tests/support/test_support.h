#pragma once

// Helpers shared by test files: scratch directories, whole-file reads, and
// the independent TensorBoard reader. Header-only, for tests alone.

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace trainloop::testing_support {

/// A fresh directory under the system's temporary directory, named after the
/// running test, removed with everything in it on destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    path = std::filesystem::temp_directory_path() /
           fmt::format("trainloop_{}_{}_{}", test ? test->test_suite_name() : "test",
                       test ? test->name() : "scratch", getpid());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

/// The whole file, or "" when it cannot be read.
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// Output of a shell command and its exit status.
struct CommandResult {
  int status = -1;
  std::string output;
};

/// Runs `command` with /bin/sh and collects its standard output.
inline CommandResult run_command(const std::string& command) {
  CommandResult result;
  std::FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  for (size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

/// `tests/python/tfevents.py --strict --tsv DIR`: one line per summary value
/// (run, tag, step, wall time, value), decoded by the independent reader.
/// Its status is not 0 when the reader or its Python is missing.
inline CommandResult tfevents_tsv(const std::filesystem::path& directory) {
  return run_command(fmt::format("'{}' '{}' --strict --tsv '{}'", TRAINLOOP_PYTHON,
                                 TRAINLOOP_SOURCE_DIR "/tests/python/tfevents.py",
                                 directory.string()));
}

}  // namespace trainloop::testing_support
