// A checkpoint directory made of fuzzed files — manifest, model.pt,
// optimizer.pt, state.pt, split from the input at each "\n--\n" — is
// resumed from by a small fit: accepted only when the manifest's checksum,
// sizes and CRCs match and the parts belong together, and then restored
// into the loop (weights, optimizer, metrics, position, generators);
// anything else is a trainloop::Error naming the file.
//
// The corpus's checkpoint is one of this fit's, written by
//   TRAINLOOP_FUZZ_WRITE_CORPUS=fuzz/corpus/checkpoint/tiny_checkpoint build-sanitize/fuzz/checkpoint_fuzzer
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "fuzz/fuzz_support.h"
#include "trainloop/callbacks/checkpoint.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace {

namespace fs = std::filesystem;
const char* const kNames[] = {"manifest.json", "model.pt", "optimizer.pt", "state.pt"};

// A fit small enough to run once per input.
struct TinyFit {
  torch::nn::Linear model{4, 3};
  torch::optim::SGD optimizer{model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9)};
  trainloop::TrainingLoop loop;

  explicit TinyFit(std::vector<std::shared_ptr<trainloop::Callback>> callbacks = {})
      : loop(trainloop::data::Epochs(dataset(), 2).seed(1), nullptr, optimizer,
             trainloop::losses::cross_entropy, {trainloop::metrics::accuracy()},
             std::move(callbacks)) {
    loop.handle_signals(false);
  }

  static trainloop::data::TensorDataset dataset() {
    return {torch::arange(24, torch::kFloat).reshape({6, 4}) / 24, torch::tensor({0, 1, 2, 0, 1, 2})};
  }
};

// Writes one checkpoint of TinyFit, taken after its first update, as a
// corpus input.
void write_corpus(const std::string& target) {
  const fs::path directory = trainloop::fuzz::scratch_directory() / "corpus-run";
  fs::remove_all(directory);
  TinyFit fit({trainloop::callbacks::checkpoint(
                   directory.string(), trainloop::callbacks::CheckpointOptions().every_n_steps(1)),
               trainloop::callbacks::lambda([](trainloop::Event event, trainloop::TrainingLoop& loop) {
                 if (event == trainloop::Event::batch_end && loop.state().global_step == 1) {
                   loop.state().stop_requested = true;
                 }
               })});
  fit.loop.fit(fit.model, 1);
  std::ofstream out(target, std::ios::binary);
  const fs::path checkpoint = directory / trainloop::checkpoint_name({0, 1});
  for (size_t i = 0; i < 4; ++i) {
    std::ifstream in(checkpoint / kNames[i], std::ios::binary);
    out << in.rdbuf();
    if (i < 3) out << "\n--\n";
  }
  fs::remove_all(directory);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* target = std::getenv("TRAINLOOP_FUZZ_WRITE_CORPUS")) {
    write_corpus(target);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto directory = trainloop::fuzz::scratch_directory() / "checkpoint";
  fs::create_directories(directory);
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  for (const char* name : kNames) {
    const size_t cut = rest.find("\n--\n");
    const std::string_view part = rest.substr(0, cut);
    trainloop::fuzz::write_bytes(directory / name, reinterpret_cast<const uint8_t*>(part.data()),
                                 part.size());
    rest = cut == std::string_view::npos ? std::string_view() : rest.substr(cut + 4);
  }
  try {
    TinyFit fit;
    fit.loop.fit(fit.model, 1, torch::kCPU, directory.string());
  } catch (const trainloop::Error&) {
  }
  return 0;
}
