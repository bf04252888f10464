#include "trainloop/data/example_order.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "trainloop/error.h"

namespace trainloop::data {
namespace {

// The shuffle is written out by hand rather than taken from std::shuffle,
// std::uniform_int_distribution or torch::randperm: their output differs
// between standard libraries and LibTorch versions, and a run resumed from a
// checkpoint must see exactly the batches it would have seen without stopping.
// splitmix64 and xoshiro256** are fully specified, so the order is the same
// everywhere (https://prng.di.unimi.it/).

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

class Xoshiro256StarStar {
 public:
  // Seeded through splitmix64, as the authors recommend, so that nearby seeds
  // and epochs give unrelated streams.
  Xoshiro256StarStar(uint64_t seed, uint64_t epoch) {
    uint64_t mixer = seed;
    uint64_t state = splitmix64(mixer) ^ epoch;
    for (uint64_t& word : s_) word = splitmix64(state);
  }

  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // A uniform draw from [0, range) by Lemire's multiply-and-reject method;
  // a plain modulo would favour small values.
  uint64_t below(uint64_t range) {
    uint64_t low = 0;
    uint64_t high = multiply(next(), range, low);
    if (low < range) {
      const uint64_t threshold = (0 - range) % range;
      while (low < threshold) high = multiply(next(), range, low);
    }
    return high;
  }

 private:
  // 64x64 -> 128-bit product from 32-bit halves: unsigned __int128 is not
  // available on every compiler we promise to build with.
  static uint64_t multiply(uint64_t a, uint64_t b, uint64_t& low) {
    const uint64_t a_lo = a & 0xffffffffULL, a_hi = a >> 32;
    const uint64_t b_lo = b & 0xffffffffULL, b_hi = b >> 32;
    const uint64_t lo_lo = a_lo * b_lo;
    const uint64_t hi_lo = a_hi * b_lo;
    const uint64_t lo_hi = a_lo * b_hi;
    const uint64_t hi_hi = a_hi * b_hi;
    const uint64_t cross = (lo_lo >> 32) + (hi_lo & 0xffffffffULL) + lo_hi;
    low = (cross << 32) | (lo_lo & 0xffffffffULL);
    return hi_hi + (hi_lo >> 32) + (cross >> 32);
  }

  uint64_t s_[4];
};

}  // namespace

torch::Tensor epoch_permutation(int64_t size, uint64_t seed, int64_t epoch) {
  if (size < 0) {
    throw Error(fmt::format("epoch_permutation: size {}, expected 0 or more", size));
  }
  torch::Tensor order = torch::arange(size, torch::kLong);
  int64_t* p = order.data_ptr<int64_t>();
  Xoshiro256StarStar generator(seed, static_cast<uint64_t>(epoch));
  // Fisher-Yates from the top down.
  for (int64_t i = size - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(generator.below(static_cast<uint64_t>(i) + 1));
    std::swap(p[i], p[j]);
  }
  return order;
}

ExampleOrder::ExampleOrder(int64_t size, int64_t batch_size, const char* who, bool shuffle,
                           torch::Device device)
    : size_(size), batch_size_(batch_size), who_(who), device_(device), shuffle_(shuffle) {
  if (batch_size <= 0) {
    throw Error(fmt::format("{}: batch size {}, expected a positive number", who, batch_size));
  }
  if (size <= 0) {
    throw Error(fmt::format("{}: the dataset holds no examples, expected at least one", who));
  }
}

// Changing the order's settings forgets the drawn order, so a stale one can
// never be served; the next start_epoch() draws it afresh.
ExampleOrder& ExampleOrder::shuffle(bool on) {
  shuffle_ = on;
  order_ = torch::Tensor();
  return *this;
}

ExampleOrder& ExampleOrder::drop_last(bool on) {
  drop_last_ = on;
  return *this;
}

ExampleOrder& ExampleOrder::seed(uint64_t seed) {
  seed_ = seed;
  order_ = torch::Tensor();
  return *this;
}

void ExampleOrder::shard(int64_t rank, int64_t world_size, bool pad) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw Error(fmt::format("{}: shard {} of {}, expected a rank from 0 to {} and at least one "
                            "process",
                            who_, rank, world_size, world_size - 1));
  }
  rank_ = rank;
  world_size_ = world_size;
  pad_ = pad;
  order_ = torch::Tensor();
}

void ExampleOrder::start_epoch(int64_t epoch) {
  if (epoch < 0) {
    throw Error(fmt::format("{}: start_epoch({}), expected an epoch of 0 or more", who_, epoch));
  }
  if (consecutive()) {
    order_ = torch::Tensor();
    return;
  }
  torch::Tensor order =
      shuffle_ ? epoch_permutation(size_, seed_, epoch) : torch::arange(size_, torch::kLong);
  if (world_size_ > 1) {
    // DistributedSampler's split: pad by repeating the order from its start
    // (as often as needed) to a multiple of the world size, then every
    // world_size-th position from this rank's.
    if (pad_ && size_ % world_size_ != 0) {
      const int64_t total = (size_ + world_size_ - 1) / world_size_ * world_size_;
      order = order.repeat({(total + size_ - 1) / size_}).narrow(0, 0, total);
    }
    order = order.slice(0, rank_, order.size(0), world_size_).contiguous();
  }
  // Where the data lives, so that indexing with it needs no transfer per batch.
  order_ = order.to(device_);
}

int64_t ExampleOrder::example_count() const {
  if (world_size_ == 1) return size_;
  if (pad_) return (size_ + world_size_ - 1) / world_size_;
  return size_ / world_size_ + (rank_ < size_ % world_size_ ? 1 : 0);
}

int64_t ExampleOrder::batch_count() const {
  const int64_t n = example_count();
  return drop_last_ ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

std::pair<int64_t, int64_t> ExampleOrder::span(int64_t index) const {
  const int64_t count = batch_count();
  if (index < 0 || index >= count) {
    throw Error(fmt::format("{}: batch {} out of range, expected 0 to {} ({} batches)", who_,
                            index, count - 1, count));
  }
  const int64_t start = index * batch_size_;
  return {start, std::min(batch_size_, example_count() - start)};
}

torch::Tensor ExampleOrder::rows(int64_t index) const {
  const auto [start, length] = span(index);
  if (consecutive()) {
    return torch::arange(start, start + length, torch::TensorOptions(torch::kLong).device(device_));
  }
  // A silent fallback to epoch 0 would hide a loop that forgot start_epoch()
  // and trains on the same order every epoch; say so instead.
  if (!order_.defined()) {
    throw Error(fmt::format(
        "{}: batch {} requested before start_epoch(), expected start_epoch(epoch) first", who_,
        index));
  }
  return order_.narrow(0, start, length);
}

std::vector<size_t> ExampleOrder::indices(int64_t index) const {
  const torch::Tensor rows = this->rows(index).to(torch::kCPU).contiguous();
  const int64_t* p = rows.data_ptr<int64_t>();
  return std::vector<size_t>(p, p + rows.numel());
}

}  // namespace trainloop::data
