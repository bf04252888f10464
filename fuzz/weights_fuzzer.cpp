// Any bytes given to load_weights as a state dict load into the model or
// give a trainloop::Error naming the file and the mismatch.
#include <torch/torch.h>

#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_support.h"
#include "trainloop/checkpoint.h"
#include "trainloop/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static torch::nn::Linear linear(3, 2);
  static trainloop::Model model(linear);
  const auto path = trainloop::fuzz::scratch_directory() / "weights.pt";
  trainloop::fuzz::write_bytes(path, data, size);
  try {
    trainloop::load_weights(model, path.string());
  } catch (const trainloop::Error&) {
  }
  return 0;
}
