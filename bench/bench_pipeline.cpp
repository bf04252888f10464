// The data side of the loop: batches per second out of the same Fashion-MNIST
// tensors (exported by `loop_overhead export`) through trainloop's Epochs,
// LibTorch's torch::data DataLoader with Stack, trainloop's TorchDataset
// adapter and the prefetcher; then how much of a slow per-example transform
// the prefetcher hides behind LeNet-5's compute. Prints one line
// `RESULT {json}` for bench/driver.py (workloads.py pipeline measures
// Python's DataLoader on the same tensors).
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "common.h"
#include "lenet.h"
#include "torch_data.h"
#include "workloads.h"

namespace tl = trainloop;
namespace bench = trainloop::bench;

namespace {

// A deterministic augmentation that costs what real ones do: pad by 2 and
// crop back at an offset taken from the index, mirror every other image,
// then `blur_passes` 3x3 box blurs (each a small conv2d).
class Augmented : public torch::data::datasets::Dataset<Augmented> {
 public:
  Augmented(tl::data::TensorDataset data, int blur_passes)
      : data_(std::move(data)), blur_passes_(blur_passes), kernel_(torch::full({1, 1, 3, 3}, 1.0 / 9)) {}
  torch::data::Example<> get(size_t index) override {
    const auto i = static_cast<int64_t>(index);
    const auto padded = torch::constant_pad_nd(data_.inputs[i], {2, 2, 2, 2});
    auto image = padded.narrow(1, i % 5, 28).narrow(2, (i / 5) % 5, 28);
    if (i % 2 == 1) image = image.flip({2});
    image = image.unsqueeze(0);
    for (int k = 0; k < blur_passes_; ++k) image = torch::conv2d(image, kernel_, {}, 1, 1);
    return {image.squeeze(0), data_.targets[i]};
  }
  torch::optional<size_t> size() const override { return static_cast<size_t>(data_.size()); }

 private:
  tl::data::TensorDataset data_;
  int blur_passes_;
  torch::Tensor kernel_;
};

// Touches every batch of epoch 0 of `source`; returns the batch count.
int64_t drain(tl::data::BatchSource& source) {
  source.start_epoch(0);
  int64_t sum = 0;
  for (int64_t b = 0; b < source.batch_count(); ++b) sum += source.batch(b).inputs.size(0);
  return sum > 0 ? source.batch_count() : 0;
}

template <class Loader>
int64_t drain_loader(Loader& loader) {
  int64_t batches = 0;
  for (auto& batch : loader) batches += batch.data.size(0) > 0 ? 1 : 0;
  return batches;
}

// fit of LeNet-5 (SGD, no callbacks) on `source`.
bench::Times fit_times(tl::data::DataSource source) {
  torch::manual_seed(0);
  tl::examples::LeNet net;
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  tl::TrainingLoop loop(std::move(source), nullptr, optimizer, tl::losses::cross_entropy);
  const bench::Stopwatch stopwatch;
  loop.fit(net, 1, torch::kCPU);
  return stopwatch.elapsed();
}

double seconds_of(const std::function<void()>& body) {
  const double start = bench::monotonic_seconds();
  body();
  return bench::seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir;
  int threads = 1, repeats = 5, blur_passes = 16, loader_workers = 2;
  int64_t batch_size = 64, overlap_examples = 6400;
  CLI::App app("Batches per second of the data sources, and the prefetcher's overlap.", "bench_pipeline");
  app.add_option("--data", data_dir, "directory written by loop_overhead export")->required();
  app.add_option("--threads", threads, "LibTorch threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--repeats", repeats, "alternating repetitions")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--batch-size", batch_size, "examples per batch")->capture_default_str();
  app.add_option("--blur-passes", blur_passes, "3x3 blurs per example in the slow transform")->capture_default_str();
  app.add_option("--loader-workers", loader_workers, "workers of the threaded torch::data loader")->capture_default_str();
  app.add_option("--overlap-examples", overlap_examples, "training examples of the overlap runs")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);

  const c10::IValue saved = bench::load_pickle(data_dir + "/fashion.pt");
  const tl::data::TensorDataset train(bench::inputs_of(bench::tensor_at(saved, "x_train")),
                                     bench::tensor_at(saved, "y_train"));
  const torch::Tensor permutation = tl::data::epoch_permutation(train.size(), 1, 0);
  auto order = std::make_shared<std::vector<size_t>>(static_cast<size_t>(train.size()));
  for (size_t i = 0; i < order->size(); ++i) {
    (*order)[i] = static_cast<size_t>(permutation[static_cast<int64_t>(i)].item<int64_t>());
  }

  // Batches per second, epoch 0's order (the one workloads.py uses) in all.
  using torch::data::transforms::Stack;
  const auto options = torch::data::DataLoaderOptions(static_cast<size_t>(batch_size));
  auto loader = torch::data::make_data_loader(bench::Rows(train).map(Stack<>()), bench::GivenOrder(order), options);
  auto threaded = torch::data::make_data_loader(bench::Rows(train).map(Stack<>()), bench::GivenOrder(order),
                                                torch::data::DataLoaderOptions(options).workers(static_cast<size_t>(loader_workers)));
  tl::data::Epochs epochs(train, batch_size);
  epochs.seed(1);
  auto adapter = tl::data::TorchDataset(bench::Rows(train), batch_size).seed(1);
  auto prefetched = tl::data::prefetch(tl::data::Epochs(train, batch_size).seed(1));
  const std::vector<std::pair<std::string, std::function<int64_t()>>> ways{
      {"epochs", [&] { return drain(epochs); }},
      {"prefetch_epochs", [&] { return drain(*prefetched); }},
      {"torch_data_stack", [&] { return drain_loader(*loader); }},
      {fmt::format("torch_data_stack_{}_workers", loader_workers), [&] { return drain_loader(*threaded); }},
      {"torch_dataset_adapter", [&] { return drain(adapter); }},
  };
  // Per wall second (what the loop waits for) and per CPU second (what it
  // costs, all threads together; robust on a shared machine).
  std::vector<std::vector<double>> rates(ways.size()), cpu_rates(ways.size());
  for (int r = -1; r < repeats; ++r) {  // -1: warm-up round
    for (size_t k = 0; k < ways.size(); ++k) {
      const size_t w = (k + static_cast<size_t>(std::max(r, 0))) % ways.size();
      const bench::Stopwatch stopwatch;
      const auto batches = static_cast<double>(ways[w].second());
      const bench::Times times = stopwatch.elapsed();
      if (r < 0) continue;
      rates[w].push_back(batches / times.wall);
      cpu_rates[w].push_back(batches / times.cpu);
    }
  }
  bench::JsonLine rates_json, cpu_rates_json;
  for (size_t w = 0; w < ways.size(); ++w) {
    rates_json.add(ways[w].first, rates[w]);
    cpu_rates_json.add(ways[w].first, cpu_rates[w]);
  }

  // Overlap: LeNet-5 on examples whose transform is slow, without and with
  // the prefetcher, against the transform alone and the compute alone.
  const int64_t n = std::min(overlap_examples, train.size());
  const tl::data::TensorDataset part(train.inputs.narrow(0, 0, n), train.targets.narrow(0, 0, n));
  const auto slow = [&] { return tl::data::TorchDataset(Augmented(part, blur_passes), batch_size).seed(1); };
  // CPU over wall time of the prefetched fit says how many cores the two
  // threads really had: 2 when both ran at once, 1 when they took turns.
  std::vector<double> data_only, compute_only, serial, overlapped, overlapped_cores;
  for (int r = -1; r < repeats; ++r) {
    std::vector<std::function<void()>> parts{
        [&] { auto s = slow(); const double t = seconds_of([&] { drain(s); }); if (r >= 0) data_only.push_back(t); },
        [&] { const double t = fit_times(tl::data::Epochs(part, batch_size).seed(1)).wall; if (r >= 0) compute_only.push_back(t); },
        [&] { const double t = fit_times(slow()).wall; if (r >= 0) serial.push_back(t); },
        [&] {
          const bench::Times t = fit_times(tl::data::prefetch(slow()));
          if (r < 0) return;
          overlapped.push_back(t.wall);
          overlapped_cores.push_back(t.cpu / t.wall);
        },
    };
    for (size_t k = 0; k < parts.size(); ++k) parts[(k + static_cast<size_t>(std::max(r, 0))) % parts.size()]();
  }

  std::printf("RESULT %s\n", bench::JsonLine()
                                 .add("threads", static_cast<int64_t>(torch::get_num_threads()))
                                 .add("batch_size", batch_size)
                                 .add("examples", train.size())
                                 .raw("rates", rates_json.str())
                                 .raw("cpu_rates", cpu_rates_json.str())
                                 .add("overlap_examples", n)
                                 .add("blur_passes", static_cast<int64_t>(blur_passes))
                                 .add("data_only", data_only)
                                 .add("compute_only", compute_only)
                                 .add("serial", serial)
                                 .add("prefetched", overlapped)
                                 .add("prefetched_cores", overlapped_cores)
                                 .str()
                                 .c_str());
  return 0;
}
