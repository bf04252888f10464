#include "../src/callbacks/flush_timer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>

namespace trainloop::callbacks::detail {
namespace {

using testing::HasSubstr;
using testing::ThrowsMessage;

TEST(FlushTimerTest, TheFirstEpochEndFlushesThenOnlyOncePerInterval) {
  FlushTimer timer(3600);
  EXPECT_FALSE(timer.at_batch_end());  // nothing owed before an epoch end
  EXPECT_TRUE(timer.at_epoch_end());
  EXPECT_FALSE(timer.at_epoch_end());
  EXPECT_FALSE(timer.at_epoch_end());
  EXPECT_FALSE(timer.at_batch_end());  // owed, but an hour has not passed
}

TEST(FlushTimerTest, AnOwedFlushIsPaidAtTheFirstBatchEndAfterTheInterval) {
  FlushTimer timer(0.05);
  EXPECT_TRUE(timer.at_epoch_end());
  EXPECT_FALSE(timer.at_epoch_end());
  EXPECT_FALSE(timer.at_batch_end());
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  EXPECT_TRUE(timer.at_batch_end());
  EXPECT_FALSE(timer.at_batch_end());  // paid: nothing owed any more
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  EXPECT_FALSE(timer.at_batch_end());  // time passed, but no epoch ended
  EXPECT_TRUE(timer.at_epoch_end());   // an epoch end after the interval flushes at once
}

TEST(FlushTimerTest, ZeroFlushesAtEveryEpochEnd) {
  FlushTimer timer(0);
  for (int epoch = 0; epoch < 5; ++epoch) {
    EXPECT_TRUE(timer.at_epoch_end());
    EXPECT_FALSE(timer.at_batch_end());
  }
}

TEST(FlushTimerTest, ARestartedFitFlushesAtItsFirstEpochEnd) {
  FlushTimer timer(3600);
  EXPECT_TRUE(timer.at_epoch_end());
  EXPECT_FALSE(timer.at_epoch_end());
  timer.restart();
  EXPECT_FALSE(timer.at_batch_end());  // the owed flush went with the old fit
  EXPECT_TRUE(timer.at_epoch_end());
}

TEST(FlushTimerTest, RejectsNegativeAndNanIntervals) {
  EXPECT_NO_THROW(check_flush_seconds("csv_logger", 0));
  EXPECT_THAT([] { check_flush_seconds("csv_logger", -1); },
              ThrowsMessage<Error>(HasSubstr("csv_logger: flush_seconds is -1, expected >= 0")));
  EXPECT_THAT([] { check_flush_seconds("tensorboard", std::nan("")); },
              ThrowsMessage<Error>(HasSubstr("tensorboard: flush_seconds is nan, expected >= 0")));
}

}  // namespace
}  // namespace trainloop::callbacks::detail
