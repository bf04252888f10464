#pragma once

// A child process for the end-to-end tests: a worker executable run with a
// chosen environment, its output appended to a log file. Header-only, for
// tests alone.

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

extern char** environ;

namespace trainloop::testing_support {

/// How a child process ended.
struct Exit {
  bool signaled = false;
  int code = -1;  ///< exit status, or the signal number when signaled
};

/// Runs `args[0]` with `args`, stdout and stderr appended to `log`. The
/// environment is this process's without torchrun's variables, plus `env`,
/// so a test decides alone whether the child is a rank of a job. Killed
/// with SIGKILL on destruction if still running.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> args, const std::filesystem::path& log,
               const std::map<std::string, std::string>& env = {})
      : log_(log) {
    // Built before fork: nothing else is safe after fork in a process with
    // LibTorch's threads, so the child only redirects and execs.
    std::vector<std::string> variables;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string text = *entry;
      const std::string name = text.substr(0, text.find('='));
      if (env.count(name) == 0 && !torchrun_variable(name)) variables.push_back(text);
    }
    for (const auto& [name, value] : env) variables.push_back(name + "=" + value);
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& variable : variables) envp.push_back(variable.data());
    envp.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      FILE* sink = std::fopen(log.c_str(), "a");
      if (sink != nullptr) {
        dup2(fileno(sink), 1);
        dup2(fileno(sink), 2);
      }
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  void signal(int number) const { ::kill(pid_, number); }
  bool running() {
    poll(WNOHANG);
    return !reaped_;
  }
  /// Blocks until the child ends.
  Exit wait() {
    poll(0);
    return exit_;
  }
  /// The exit, or nothing if the child still runs after `limit`.
  std::optional<Exit> wait_for(std::chrono::duration<double> limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!reaped_ && std::chrono::steady_clock::now() < deadline) {
      poll(WNOHANG);
      if (!reaped_) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!reaped_) return std::nullopt;
    return exit_;
  }
  /// What the child has written so far.
  std::string log() const { return read_text(log_); }

 private:
  static bool torchrun_variable(const std::string& name) {
    for (const char* known :
         {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
      if (name == known) return true;
    }
    return false;
  }
  void poll(int options) {
    if (reaped_ || pid_ <= 0) return;
    int status = 0;
    if (waitpid(pid_, &status, options) != pid_) return;
    reaped_ = true;
    exit_.signaled = WIFSIGNALED(status);
    exit_.code = exit_.signaled ? WTERMSIG(status) : WEXITSTATUS(status);
  }

  std::filesystem::path log_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  Exit exit_;
};

}  // namespace trainloop::testing_support
