// A checkpoint directory made of fuzzed files — manifest, model.pt,
// optimizer.pt, state.pt, split from the input at each "\n--\n" — is
// accepted only when the manifest's sizes and CRCs match; anything else is
// a trainloop::Error naming the file.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string_view>

#include "fuzz/fuzz_support.h"
#include "src/checkpoint_restore.h"
#include "trainloop/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto directory = trainloop::fuzz::scratch_directory() / "checkpoint";
  std::filesystem::create_directories(directory);
  const char* names[] = {"manifest.json", "model.pt", "optimizer.pt", "state.pt"};
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  for (const char* name : names) {
    const size_t cut = rest.find("\n--\n");
    const std::string_view part = rest.substr(0, cut);
    trainloop::fuzz::write_bytes(directory / name, reinterpret_cast<const uint8_t*>(part.data()),
                                 part.size());
    rest = cut == std::string_view::npos ? std::string_view() : rest.substr(cut + 4);
  }
  try {
    trainloop::detail::read_checkpoint(directory.string());
  } catch (const trainloop::Error&) {
  }
  return 0;
}
