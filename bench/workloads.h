// The three workloads every implementation trains (C++ here, Python in
// workloads.py), and the files `loop_overhead export` writes so that all of
// them start from the same split, the same batch order and the same weights.
#pragma once

#include <trainloop/trainloop.h>

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "common.h"
#include "lenet.h"
#include "tabular.h"

namespace trainloop::bench {

/// The seed of every shuffled order: epoch e trains on epoch_permutation(n, kOrderSeed, e).
constexpr uint64_t kOrderSeed = 1;

/// What a workload trains and how. Mirrored in workloads.py's WORKLOADS.
struct Spec {
  std::string name;        ///< "w1", "w2", "w3"
  std::string data_file;   ///< under the export directory
  std::string init_file;   ///< the initial weights, under the export directory
  bool lenet = false;      ///< LeNet-5, else the MLP 64-32-16-10
  int64_t batch_size = 0;  ///< 0: the whole training set (full batch)
  bool shuffle = false;    ///< reshuffle every epoch (exported orders)
  int64_t epochs = 1;
  bool validate = false;   ///< validate after every epoch; else evaluate once at the end
  int64_t validation_batch_size = 0;  ///< 0: the whole test set
  bool adam = false;       ///< Adam(lr), else SGD(lr, momentum)
  double lr = 0.01;
  double momentum = 0.0;
};

/// W1: the PyTorch tutorial (full batch, Adam 0.01, 100 epochs, test accuracy at the end).
/// W2: the same MLP in shuffled mini-batches of 32, 20 epochs, validated every epoch.
/// W3: LeNet-5 on Fashion-MNIST, batch 64, SGD 0.01 with momentum 0.9, 1 epoch + validation.
inline Spec spec_of(const std::string& name) {
  if (name == "w1") return {"w1", "digits.pt", "mlp_init.pt", false, 0, false, 100, false, 0, true, 0.01, 0};
  if (name == "w2") return {"w2", "digits.pt", "mlp_init.pt", false, 32, true, 20, true, 256, true, 0.01, 0};
  if (name == "w3") {
    return {"w3", "fashion.pt", "lenet_init.pt", true, 64, true, 1, true, 1000, false, 0.01, 0.9};
  }
  throw Error(fmt::format("unknown workload \"{}\", expected w1, w2 or w3", name));
}

/// The MLP of W1 and W2: Linear and ReLU layers 64-32-16, then 10 classes.
/// Its parameters are named "0.weight", "0.bias", "2.weight", … as those of
/// Python's `nn.Sequential` of the same layers.
inline torch::nn::Sequential make_mlp() { return examples::mlp(64, {32, 16}, 10); }

/// A workload's data as exported: training and test tensors, the per-epoch
/// orders of the training set and the initial weights.
struct Data {
  data::TensorDataset train;
  data::TensorDataset test;
  torch::Tensor orders;  ///< int64 [epochs, n_train], row e = epoch e's order
  c10::IValue init;
};

/// Exported images are bytes; they become floats in [0, 1] as fashion_mnist
/// makes them, in every implementation alike. Tables are floats already.
inline torch::Tensor inputs_of(const torch::Tensor& exported) {
  if (exported.scalar_type() == torch::kUInt8) return exported.to(torch::kFloat32).div_(255);
  return exported;
}

inline Data load_data(const std::string& dir, const Spec& spec) {
  const c10::IValue file = load_pickle(dir + "/" + spec.data_file);
  Data data;
  data.train = data::TensorDataset(inputs_of(tensor_at(file, "x_train")), tensor_at(file, "y_train"));
  data.test = data::TensorDataset(inputs_of(tensor_at(file, "x_test")), tensor_at(file, "y_test"));
  data.orders = tensor_at(file, "orders");
  data.init = load_pickle(dir + "/" + spec.init_file);
  return data;
}

/// The optimizer of `spec` over `parameters`.
inline std::unique_ptr<torch::optim::Optimizer> make_optimizer(
    const Spec& spec, const std::vector<torch::Tensor>& parameters) {
  if (spec.adam) {
    return std::make_unique<torch::optim::Adam>(parameters, torch::optim::AdamOptions(spec.lr));
  }
  return std::make_unique<torch::optim::SGD>(
      parameters, torch::optim::SGDOptions(spec.lr).momentum(spec.momentum));
}

/// Calls `body(net)` with a fresh model of `spec` holding the exported initial
/// weights: a `torch::nn::Sequential` or an `examples::LeNet`, so that code
/// which calls `net->forward` directly stays free of type erasure.
template <class Body>
auto with_model(const Spec& spec, const Data& data, Body&& body) {
  if (spec.lenet) {
    examples::LeNet net;
    load_parameters(*net, data.init);
    return body(net);
  }
  torch::nn::Sequential net = make_mlp();
  load_parameters(*net, data.init);
  return body(net);
}

/// Training batch size of `spec` on `data` (the full set for full batch).
inline int64_t batch_size_of(const Spec& spec, const Data& data) {
  return spec.batch_size > 0 ? spec.batch_size : data.train.size();
}

/// Validation (or final evaluation) batch size.
inline int64_t validation_batch_size_of(const Spec& spec, const Data& data) {
  return spec.validation_batch_size > 0 ? spec.validation_batch_size : data.test.size();
}

}  // namespace trainloop::bench
