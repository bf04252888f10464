#include "trainloop/output_lock.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "trainloop/error.h"

namespace trainloop {
namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;
using testing::ThrowsMessage;

fs::path fresh_directory(const std::string& name) {
  const fs::path path = fs::temp_directory_path() / ("trainloop_output_lock_" + name + "_" +
                                                     std::to_string(::getpid()));
  fs::remove_all(path);
  return path;
}

// A child process that holds the lock on `path` until killed; returns its
// PID once it holds it (or -1 when it could not take it).
pid_t hold_in_child(const std::string& path, OutputKind kind) {
  int ready[2];
  EXPECT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(ready[0]);
    char status = 'n';
    try {
      OutputLock lock(path, kind);
      status = 'y';
      (void)!::write(ready[1], &status, 1);
      ::pause();
    } catch (...) {
      (void)!::write(ready[1], &status, 1);
    }
    ::_exit(0);
  }
  ::close(ready[1]);
  char status = 'n';
  const bool got = ::read(ready[0], &status, 1) == 1;
  ::close(ready[0]);
  if (got && status == 'y') return child;
  ::waitpid(child, nullptr, 0);
  return -1;
}

void stop(pid_t child) {
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
}

TEST(OutputLockTest, ASecondProcessFailsAtOnceNamingTheDirectoryAndTheHolder) {
  const fs::path directory = fresh_directory("second");
  const pid_t holder = hold_in_child(directory.string(), OutputKind::directory);
  ASSERT_GT(holder, 0);
  EXPECT_THAT([&] { OutputLock lock(directory.string(), OutputKind::directory); },
              ThrowsMessage<Error>(HasSubstr(directory.string() + ": in use by another process (PID " +
                                             std::to_string(holder) + ")")));
  stop(holder);
  // A killed holder's lock goes with its process.
  EXPECT_NO_THROW(OutputLock(directory.string(), OutputKind::directory));
  fs::remove_all(directory);
}

TEST(OutputLockTest, AFileIsLockedBesideItAndOtherFilesOfItsDirectoryAreFree) {
  const fs::path directory = fresh_directory("file");
  const std::string log = (directory / "log.csv").string();
  const pid_t holder = hold_in_child(log, OutputKind::file);
  ASSERT_GT(holder, 0);
  EXPECT_TRUE(fs::exists(directory / ".log.csv.trainloop.lock"));
  EXPECT_THAT([&] { OutputLock lock(log, OutputKind::file); },
              ThrowsMessage<Error>(HasSubstr(log + ": in use by another process")));
  EXPECT_NO_THROW(OutputLock((directory / "other.csv").string(), OutputKind::file));
  stop(holder);
  fs::remove_all(directory);
}

TEST(OutputLockTest, OneProcessMayHoldAnOutputTwiceAndReleasingTheLastRemovesTheLockFile) {
  const fs::path directory = fresh_directory("twice");
  {
    OutputLock first(directory.string(), OutputKind::directory);
    EXPECT_TRUE(fs::is_directory(directory));
    EXPECT_EQ(first.lock_file(), (fs::canonical(directory) / ".trainloop.lock").string());
    {
      OutputLock second((directory / "." / "").string(), OutputKind::directory);
      EXPECT_EQ(second.lock_file(), first.lock_file());
    }
    // Still held by `first`.
    const pid_t child = hold_in_child(directory.string(), OutputKind::directory);
    EXPECT_EQ(child, -1);
    if (child > 0) stop(child);
  }
  EXPECT_FALSE(fs::exists(directory / ".trainloop.lock"));
  const pid_t child = hold_in_child(directory.string(), OutputKind::directory);
  EXPECT_GT(child, 0);
  if (child > 0) stop(child);
  fs::remove_all(directory);
}

TEST(OutputLockTest, AMovedLockIsReleasedOnce) {
  const fs::path directory = fresh_directory("moved");
  {
    OutputLock first(directory.string(), OutputKind::directory);
    OutputLock moved(std::move(first));
    OutputLock assigned((directory / "sub").string(), OutputKind::directory);
    assigned = std::move(moved);
    EXPECT_FALSE(fs::exists(directory / "sub" / ".trainloop.lock"));
    EXPECT_TRUE(fs::exists(directory / ".trainloop.lock"));
  }
  EXPECT_FALSE(fs::exists(directory / ".trainloop.lock"));
  fs::remove_all(directory);
}

TEST(OutputLockTest, AnOutputInsideAFileNamesThePath) {
  const fs::path directory = fresh_directory("inside_file");
  fs::create_directories(directory);
  std::ofstream(directory / "plain") << "x";
  EXPECT_THAT([&] { OutputLock lock((directory / "plain" / "run").string(), OutputKind::directory); },
              ThrowsMessage<Error>(HasSubstr((directory / "plain" / "run").string() +
                                             ": cannot create the directory")));
  fs::remove_all(directory);
}

}  // namespace
}  // namespace trainloop
