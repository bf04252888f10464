// Any text, parsed as a checkpoint manifest, gives a manifest or a
// trainloop::Error naming the field.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "src/checkpoint_manifest.h"
#include "trainloop/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    trainloop::detail::parse_manifest(
        std::string_view(reinterpret_cast<const char*>(data), size), "manifest.json");
  } catch (const trainloop::Error&) {
  }
  return 0;
}
