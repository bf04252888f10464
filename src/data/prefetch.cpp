#include "trainloop/data/prefetch.h"

#include <fmt/format.h>

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "trainloop/error.h"

namespace trainloop::data {
namespace {

// A prepared batch, or the exception its preparation threw.
struct Item {
  Batch batch;
  std::exception_ptr error;
};

// The producer thread and its queue. Only the consumer thread calls the
// public members; the producer touches the queue and the flags under the mutex.
class Worker {
 public:
  Worker(DataSource source, size_t depth) : source_(std::move(source)), depth_(depth) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() { stop(); }

  BatchSource& source() { return *source_; }

  // Stops and joins the producer, dropping what it had queued. A
  // source.batch() call in progress finishes first: there is no safe way to
  // interrupt it.
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.clear();
    stopping_ = false;
    finished_ = true;
  }

  // Starts producing batches first..count-1; the producer must be stopped.
  void start(int64_t first, int64_t count) {
    next_ = first;
    count_ = count;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = false;
    }
    try {
      thread_ = std::thread([this, first] { produce(first); });
    } catch (...) {
      // No thread (e.g. out of resources): no batch is coming, so a waiting
      // take() must not wait for one.
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = true;
      throw;
    }
  }

  Batch take(int64_t index) {
    // Two rounds at most: a restart at `index` makes it the next batch.
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (index == next_) {
          changed_.wait(lock, [&] { return !queue_.empty() || finished_; });
          if (!queue_.empty()) {
            Item item = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            changed_.notify_all();  // room in the queue
            // After an error the producer has ended and next_ stays at
            // `index`, so asking again restarts there: a retry.
            if (item.error) std::rethrow_exception(item.error);
            next_ = index + 1;
            return std::move(item.batch);
          }
        }
      }
      // Another batch than the next one, or the producer ended without this
      // one (it failed before): restart at `index`.
      stop();
      start(index, count_);
    }
  }

 private:
  void produce(int64_t first) {
    for (int64_t i = first; i < count_; ++i) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [&] { return stopping_ || queue_.size() < depth_; });
        if (stopping_) return;
      }
      Item item;
      // Everything is caught: an exception escaping a thread would end the process.
      try {
        item.batch = source_->batch(i);
      } catch (...) {
        item.error = std::current_exception();
      }
      const bool failed = item.error != nullptr;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) return;
        queue_.push_back(std::move(item));
      }
      changed_.notify_all();
      if (failed) break;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = true;
    }
    changed_.notify_all();
  }

  DataSource source_;
  const size_t depth_;
  // Read by the producer, written only while it is stopped.
  int64_t count_ = 0;
  // The consumer's own: the index the front of the queue holds.
  int64_t next_ = 0;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Item> queue_;
  bool stopping_ = false;
  bool finished_ = true;
  std::thread thread_;
};

class Prefetcher final : public BatchSource {
 public:
  Prefetcher(DataSource source, size_t depth)
      : worker_(std::make_unique<Worker>(std::move(source), depth)) {}

  void start_epoch(int64_t epoch) override {
    // The source is only touched here once the producer has stopped.
    worker_->stop();
    started_ = false;
    worker_->source().start_epoch(epoch);
    count_ = worker_->source().batch_count();
    started_ = true;
    worker_->start(0, count_);
  }

  int64_t batch_count() const override {
    return started_ ? count_ : worker_->source().batch_count();
  }

  // The batches prepared for the old shard are dropped, and until the next
  // start_epoch none is served: the new order is the source's to draw.
  void shard(int64_t rank, int64_t world_size, bool pad) override {
    worker_->stop();
    started_ = false;
    worker_->source().shard(rank, world_size, pad);
  }

  bool shuffles() const override { return worker_->source().shuffles(); }

  Batch batch(int64_t index) const override {
    if (!started_) {
      throw Error(fmt::format(
          "prefetch: batch {} requested before start_epoch(), expected start_epoch(epoch) first",
          index));
    }
    if (index < 0 || index >= count_) {
      throw Error(fmt::format("prefetch: batch {} out of range, expected 0 to {} ({} batches)",
                              index, count_ - 1, count_));
    }
    return worker_->take(index);
  }

 private:
  // Behind a pointer, so the const batch() can drive it.
  std::unique_ptr<Worker> worker_;
  bool started_ = false;
  int64_t count_ = 0;
};

}  // namespace

std::shared_ptr<BatchSource> prefetch(DataSource source, PrefetchOptions options) {
  if (!source) throw Error("prefetch: no source, expected a BatchSource");
  if (options.depth() < 1) {
    throw Error(fmt::format("prefetch: depth {}, expected 1 or more batches", options.depth()));
  }
  return std::make_shared<Prefetcher>(std::move(source), static_cast<size_t>(options.depth()));
}

}  // namespace trainloop::data
