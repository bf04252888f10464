#pragma once

// Helpers shared by test files: scratch directories, whole-file reads, and
// the independent TensorBoard reader. Header-only, for tests alone.

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <string>
#include <thread>

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

/// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"), or -1.
inline int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

/// How far the process's resident memory rose, at its peak, above its level
/// before `work` ran, in bytes; -1 when the kernel cannot say. The peak
/// (VmHWM) is reset first, through /proc/self/clear_refs.
template <class Work>
int64_t peak_memory_growth(Work work) {
  const int64_t before = proc_status_bytes("VmRSS");
  if (!(std::ofstream("/proc/self/clear_refs") << "5" << std::flush)) return -1;
  work();
  const int64_t peak = proc_status_bytes("VmHWM");
  return before < 0 || peak < 0 ? -1 : peak - before;
}

/// Makes a FIFO at `path` (failing the test if it cannot).
inline void make_fifo(const std::filesystem::path& path) {
  ASSERT_EQ(mkfifo(path.c_str(), 0600), 0) << path << ": " << std::strerror(errno);
}

/// What `read` throws, or "(no error)", run on another thread so a reader
/// that blocks on the FIFO at `fifo` fails the test instead of hanging it:
/// after 10 s the FIFO's writing end is opened and closed, which lets a
/// blocked open (or read) return.
template <class Read>
std::string error_reading_fifo(const std::filesystem::path& fifo, Read read) {
  auto result = std::async(std::launch::async, [&read]() -> std::string {
    try {
      read();
      return "(no error)";
    } catch (const std::exception& e) {
      return e.what();
    }
  });
  if (result.wait_for(std::chrono::seconds(10)) == std::future_status::timeout) {
    ADD_FAILURE() << fifo << ": the reader blocked on the FIFO";
    while (result.wait_for(std::chrono::milliseconds(10)) == std::future_status::timeout) {
      // ENXIO until a reader has the FIFO open.
      const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) ::close(fd);
    }
  }
  return result.get();
}

}  // namespace trainloop::testing_support
