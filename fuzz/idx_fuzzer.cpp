// Any bytes, read as a plain or a gzip-compressed IDX file, give a tensor or
// a trainloop::Error, never a crash, a hang or a large allocation.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_support.h"
#include "trainloop/data/idx.h"
#include "trainloop/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the file name, and with it the gzip path.
  const bool gzip = (data[0] & 1) != 0;
  const auto path = trainloop::fuzz::scratch_directory() / (gzip ? "input.gz" : "input");
  trainloop::fuzz::write_bytes(path, data + 1, size - 1);
  try {
    const torch::Tensor tensor = trainloop::data::read_idx(path.string());
    if (tensor.numel() > 0) (void)tensor.sum();
  } catch (const trainloop::Error&) {
  }
  return 0;
}
