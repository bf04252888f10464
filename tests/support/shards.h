#pragma once

// DistributedSampler's split, written out independently of ExampleOrder, for
// the tests of every source that orders examples. Header-only, for tests alone.

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace trainloop::testing_support {

/// Rank `rank`'s examples as DistributedSampler picks them from `order`:
/// positions rank, rank + world, rank + 2 world, ..., padded (when asked) to
/// a multiple of `world` by wrapping around to the order's start.
inline std::vector<int64_t> expected_shard(const std::vector<int64_t>& order, int64_t rank,
                                           int64_t world, bool pad) {
  const auto n = static_cast<int64_t>(order.size());
  const int64_t total = pad ? (n + world - 1) / world * world : n;
  std::vector<int64_t> shard;
  for (int64_t i = rank; i < total; i += world) shard.push_back(order[static_cast<size_t>(i % n)]);
  return shard;
}

/// A tensor's values as int64s, in order.
inline std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

/// 0, 1, ..., n-1.
inline std::vector<int64_t> iota(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  return v;
}

}  // namespace trainloop::testing_support
