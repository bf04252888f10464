#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace trainloop::examples {

/// Two 3x3 convolutions with batch norm, added to the input (or to a 1x1
/// convolution of it where the stride or the channel count changes).
struct BasicBlockImpl : torch::nn::Module {
  BasicBlockImpl(int64_t in_channels, int64_t out_channels, int64_t stride)
      : conv1(register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, 3)
                                                             .stride(stride).padding(1).bias(false)))),
        bn1(register_module("bn1", torch::nn::BatchNorm2d(out_channels))),
        conv2(register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(out_channels, out_channels, 3)
                                                             .padding(1).bias(false)))),
        bn2(register_module("bn2", torch::nn::BatchNorm2d(out_channels))) {
    if (stride != 1 || in_channels != out_channels) {
      shortcut = register_module("shortcut", torch::nn::Sequential(
          torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, out_channels, 1).stride(stride).bias(false)),
          torch::nn::BatchNorm2d(out_channels)));
    }
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = torch::relu(bn1(conv1(x)));
    y = bn2(conv2(y));
    return torch::relu(y + (shortcut ? shortcut->forward(x) : x));
  }

  torch::nn::Conv2d conv1;
  torch::nn::BatchNorm2d bn1;
  torch::nn::Conv2d conv2;
  torch::nn::BatchNorm2d bn2;
  torch::nn::Sequential shortcut{nullptr};
};
TORCH_MODULE(BasicBlock);

/// A CIFAR-style ResNet (He et al. 2016, section 4.2): a 3x3 convolution to
/// 16 channels, three stages of `blocks_per_stage` basic blocks with 16, 32
/// and 64 channels (the second and third start with stride 2), global
/// average pooling and a linear layer. 3 blocks per stage make ResNet-20.
/// Works on any image size, e.g. 3x32x32 (CIFAR) or 1x28x28 (Fashion-MNIST).
struct ResNetImpl : torch::nn::Module {
  ResNetImpl(int64_t in_channels, int64_t classes, int64_t blocks_per_stage = 3)
      : stem(register_module("stem", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, 16, 3)
                                                           .padding(1).bias(false)))),
        bn(register_module("bn", torch::nn::BatchNorm2d(16))),
        stages(register_module("stages", torch::nn::Sequential())),
        fc(register_module("fc", torch::nn::Linear(64, classes))) {
    int64_t channels = 16;
    for (const int64_t width : {16, 32, 64}) {
      for (int64_t b = 0; b < blocks_per_stage; ++b) {
        const int64_t stride = (b == 0 && width != 16) ? 2 : 1;
        stages->push_back(BasicBlock(channels, width, stride));
        channels = width;
      }
    }
    // He initialization for the convolutions, as in the paper.
    for (auto& module : modules(/*include_self=*/false)) {
      if (auto* conv = module->as<torch::nn::Conv2d>()) {
        torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
      }
    }
  }

  /// Images `[N, C, H, W]` -> class scores `[N, classes]`.
  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = stages->forward(torch::relu(bn(stem(x))));
    return fc(y.mean({2, 3}));
  }

  torch::nn::Conv2d stem;
  torch::nn::BatchNorm2d bn;
  torch::nn::Sequential stages;
  torch::nn::Linear fc;
};
TORCH_MODULE(ResNet);

}  // namespace trainloop::examples
