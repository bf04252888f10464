// Any bytes, read as a CIFAR-10 or CIFAR-100 binary batch (the first byte
// picks which), give a dataset or a trainloop::Error naming the record.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "trainloop/data/cifar.h"
#include "trainloop/error.h"

namespace tl = trainloop::data;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const tl::CifarVariant variants[] = {tl::CifarVariant::cifar10, tl::CifarVariant::cifar100_fine,
                                       tl::CifarVariant::cifar100_coarse};
  const tl::CifarVariant variant = variants[data[0] % 3];
  try {
    const tl::TensorDataset dataset = tl::parse_cifar(
        std::string_view(reinterpret_cast<const char*>(data + 1), size - 1), "data_batch_1.bin", variant);
    if (dataset.size() > 0) (void)dataset.targets.max();
  } catch (const trainloop::Error&) {
  }
  return 0;
}
