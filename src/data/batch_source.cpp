#include "trainloop/data/batch_source.h"

#include <fmt/format.h>

#include "trainloop/error.h"

namespace trainloop::data {

void BatchSource::shard(int64_t rank, int64_t world_size, bool /*pad*/) {
  if (rank == 0 && world_size == 1) return;
  throw Error(fmt::format("this BatchSource cannot be split among {} processes (rank {}): "
                          "implement BatchSource::shard to train it data-parallel",
                          world_size, rank));
}

}  // namespace trainloop::data
