// Trains a small ResNet (ResNet-20 style) on CIFAR-10 binary files, or on
// Fashion-MNIST by default, since Debian ships no CIFAR.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"
#include "resnet.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

namespace {

constexpr const char* kProgram = "resnet";

struct Flags {
  std::string cifar_dir;
  std::string fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";
  int64_t epochs = 1;
  int64_t train_examples = 30000;
  int64_t test_examples = 0;
  int64_t batch_size = 128;
  int64_t blocks_per_stage = 3;
  double lr = 0.2;
  double weight_decay = 5e-4;
  bool augment = false;
  int64_t prefetch_depth = 2;
  uint64_t seed = 42;
  std::string device = "cpu";
  int threads = 0;
  std::string out = "run/resnet";
  std::string precision = "fp32";
};

// The first `count` examples of a fixed random order (all when count is 0
// or more than there are), so a subset draws from every class.
tl::data::TensorDataset subset(const tl::data::TensorDataset& data, int64_t count, uint64_t seed) {
  if (count <= 0 || count >= data.size()) return data;
  const torch::Tensor rows = tl::data::epoch_permutation(data.size(), seed, 0).narrow(0, 0, count);
  return tl::data::TensorDataset(data.inputs.index_select(0, rows), data.targets.index_select(0, rows));
}

// One 64-bit value from a few: splitmix64 over each in turn.
uint64_t mix(std::initializer_list<uint64_t> values) {
  uint64_t state = 0;
  for (const uint64_t value : values) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ULL ^ value);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    state = z ^ (z >> 31);
  }
  return state;
}

// Training batches with the usual CIFAR augmentation, computed on the fly:
// each image shifted by up to size/8 pixels (a random crop of the image
// padded with zeros) and flipped left to right half the time. The draws
// depend only on (seed, epoch, batch, example), so a rerun sees the same
// images. Wrapped in prefetch, this runs beside the training step.
class Augmented : public tl::data::BatchSource {
 public:
  Augmented(tl::data::Epochs epochs, uint64_t seed) : epochs_(std::move(epochs)), seed_(seed) {}
  void start_epoch(int64_t epoch) override {
    epochs_.start_epoch(epoch);
    epoch_ = epoch;
  }
  int64_t batch_count() const override { return epochs_.batch_count(); }
  // The order is the wrapped Epochs': it shuffles, and shards data-parallel.
  bool shuffles() const override { return epochs_.shuffles(); }
  void shard(int64_t rank, int64_t world_size, bool pad) override { epochs_.shard(rank, world_size, pad); }
  tl::data::Batch batch(int64_t index) const override {
    tl::data::Batch batch = epochs_.batch(index);
    const int64_t height = batch.inputs.size(2), width = batch.inputs.size(3);
    const int64_t pad = std::max<int64_t>(1, height / 8);
    const torch::Tensor padded = torch::constant_pad_nd(batch.inputs, {pad, pad, pad, pad}, 0);
    std::vector<torch::Tensor> images;
    for (int64_t i = 0; i < batch.inputs.size(0); ++i) {
      const uint64_t draw = mix({seed_, static_cast<uint64_t>(epoch_), static_cast<uint64_t>(index),
                                 static_cast<uint64_t>(i)});
      const auto dy = static_cast<int64_t>(draw % static_cast<uint64_t>(2 * pad + 1));
      const auto dx = static_cast<int64_t>((draw >> 16) % static_cast<uint64_t>(2 * pad + 1));
      torch::Tensor image = padded[i].narrow(1, dy, height).narrow(2, dx, width);
      if ((draw >> 32) & 1) image = image.flip({2});
      images.push_back(image);
    }
    batch.inputs = torch::stack(images);
    return batch;
  }

 private:
  tl::data::Epochs epochs_;
  uint64_t seed_;
  int64_t epoch_ = 0;
};

// Scales every channel to mean 0 and standard deviation 1 on the training set.
void standardize(tl::data::TensorDataset& train, tl::data::TensorDataset& test) {
  const torch::Tensor mean = train.inputs.mean({0, 2, 3}, /*keepdim=*/true);
  const torch::Tensor std = train.inputs.std({0, 2, 3}, /*unbiased=*/true, /*keepdim=*/true).clamp_min(1e-6);
  train.inputs = (train.inputs - mean) / std;
  test.inputs = (test.inputs - mean) / std;
}

std::string configuration(const Flags& flags, const std::string& data_name) {
  return fmt::format("ResNet-{} on {}: {} epochs, {} training images, batch size {}, SGD "
                     "one-cycle peak {} weight decay {}, augmentation {}, seed {}, precision {}",
                     6 * flags.blocks_per_stage + 2, data_name, flags.epochs, flags.train_examples,
                     flags.batch_size, flags.lr, flags.weight_decay, flags.augment ? "on" : "off",
                     flags.seed, flags.precision);
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app("Trains a small ResNet on CIFAR-10 (--cifar-dir) or Fashion-MNIST with trainloop.",
               kProgram);
  using tl::examples::kPositive;
  app.add_option("--cifar-dir", flags.cifar_dir,
                 "directory of the CIFAR-10 binary files (data_batch_1.bin ... test_batch.bin); "
                 "empty: train on Fashion-MNIST");
  app.add_option("--fashion-mnist-dir", flags.fashion_mnist_dir, "directory of the Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--epochs", flags.epochs, "epochs to train")->check(CLI::Range(int64_t{1}, int64_t{1000}))->capture_default_str();
  app.add_option("--train-examples", flags.train_examples, "training images used, a fixed random subset (0: all)")->check(CLI::Range(int64_t{0}, int64_t{100000000}))->capture_default_str();
  app.add_option("--test-examples", flags.test_examples, "test images scored after each epoch (0: all)")->check(CLI::Range(int64_t{0}, int64_t{100000000}))->capture_default_str();
  app.add_option("--batch-size", flags.batch_size, "images per training batch")->check(CLI::Range(int64_t{1}, int64_t{65536}))->capture_default_str();
  app.add_option("--blocks-per-stage", flags.blocks_per_stage, "basic blocks in each of the 3 stages (3: ResNet-20)")->check(CLI::Range(int64_t{1}, int64_t{64}))->capture_default_str();
  app.add_option("--lr", flags.lr, "peak learning rate of the one-cycle schedule (SGD, Nesterov momentum)")->check(kPositive)->capture_default_str();
  app.add_option("--weight-decay", flags.weight_decay, "SGD weight decay")->check(tl::examples::finite_range(0.0, 1.0))->capture_default_str();
  app.add_flag("--augment", flags.augment, "random shifts and left-right flips of the training images, on a prefetch thread (recommended for CIFAR-10)");
  app.add_option("--prefetch-depth", flags.prefetch_depth, "training batches prepared ahead")->check(CLI::Range(int64_t{1}, int64_t{64}))->capture_default_str();
  app.add_option("--seed", flags.seed, "seed of the weights, the subset, the batch order and the augmentation")->check(tl::examples::kSeed)->capture_default_str();
  app.add_option("--device", flags.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads", flags.threads, "CPU threads (0: LibTorch's default)")->check(CLI::Range(0, 1024))->capture_default_str();
  app.add_option("--out", flags.out, "directory for the model and tensorboard/")->check(tl::examples::kOutputDirectory)->capture_default_str();
  tl::examples::add_precision_flag(app, flags.precision);
  if (const auto code = tl::examples::parse(app, argc, argv, kProgram)) return *code;
  torch::Device device(torch::kCPU);
  if (const auto code = tl::examples::parse_device(flags.device, kProgram, device)) return *code;
  if (flags.threads > 0) torch::set_num_threads(flags.threads);

  try {
    const bool cifar = !flags.cifar_dir.empty();
    const std::string data_name = cifar ? "CIFAR-10" : "Fashion-MNIST";
    auto [all_train, all_test] = cifar ? tl::data::cifar10(flags.cifar_dir)
                                       : tl::data::fashion_mnist(flags.fashion_mnist_dir);
    tl::data::TensorDataset train = subset(all_train, flags.train_examples, flags.seed);
    tl::data::TensorDataset test = subset(all_test, flags.test_examples, flags.seed);
    standardize(train, test);
    flags.train_examples = train.size();

    torch::manual_seed(flags.seed);
    tl::examples::ResNet model(train.inputs.size(1), 10, flags.blocks_per_stage);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(flags.lr)
                                                         .momentum(0.9)
                                                         .nesterov(true)
                                                         .weight_decay(flags.weight_decay));
    const fs::path out(flags.out);
    fs::create_directories(out);
    const auto epochs = tl::data::Epochs(train, flags.batch_size).shuffle(true).seed(flags.seed);
    tl::data::DataSource training =
        flags.augment ? tl::data::DataSource(Augmented(epochs, flags.seed)) : tl::data::DataSource(epochs);
    tl::TrainingLoop loop(
        tl::data::prefetch(training, tl::data::PrefetchOptions().depth(flags.prefetch_depth)),
        tl::data::Batches(test, 500), optimizer, tl::losses::cross_entropy, {tl::metrics::accuracy()},
        {tl::callbacks::progress(),
         tl::callbacks::tensorboard(tl::callbacks::TensorBoardOptions()
                                        .log_dir((out / "tensorboard" / "stats").string())
                                        .config_text(configuration(flags, data_name))),
         tl::callbacks::lr_scheduler(tl::schedules::one_cycle(flags.lr))});
    loop.mixed_precision(tl::parse_precision(flags.precision));

    std::printf("%s: %lld training and %lld test images of %lldx%lldx%lld; ResNet-%lld on %s, %s, LibTorch threads: %d\n",
                data_name.c_str(), static_cast<long long>(train.size()), static_cast<long long>(test.size()),
                static_cast<long long>(train.inputs.size(1)), static_cast<long long>(train.inputs.size(2)),
                static_cast<long long>(train.inputs.size(3)),
                static_cast<long long>(6 * flags.blocks_per_stage + 2), device.str().c_str(),
                flags.precision.c_str(), torch::get_num_threads());
    std::fflush(stdout);
    const auto start = std::chrono::steady_clock::now();
    loop.fit(model, flags.epochs, device);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const fs::path model_path = out / "resnet.pt";
    torch::save(model, (out / "resnet.pt.tmp").string());
    fs::rename(out / "resnet.pt.tmp", model_path);
    std::printf("test accuracy %.4f after %lld epochs on %lld training images in %.1f s (%s); model saved to %s\n",
                loop.state().metric("val_accuracy"), static_cast<long long>(flags.epochs),
                static_cast<long long>(train.size()), seconds, flags.precision.c_str(), model_path.c_str());
    return 0;
  } catch (const std::exception& e) {
    return tl::examples::run_error(kProgram, e);
  }
}
