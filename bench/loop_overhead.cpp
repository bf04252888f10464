// Measures what trainloop's fit costs over a hand-written LibTorch loop doing
// the same work: same model and initial weights, same batches in the same
// order, same optimizer, and the loss and accuracy kept as device tensors.
// The two loops alternate within one process and the medians are compared.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <unistd.h>
#include <vector>

#include "lenet.h"

namespace tl = trainloop;

namespace {

struct TinyMlpImpl : torch::nn::Module {
  TinyMlpImpl()
      : hidden(register_module("hidden", torch::nn::Linear(64, 32))),
        out(register_module("out", torch::nn::Linear(32, 10))) {}
  torch::Tensor forward(torch::Tensor x) { return out(torch::relu(hidden(x))); }
  torch::nn::Linear hidden, out;
};
TORCH_MODULE(TinyMlp);

struct Workload {
  std::string name;
  tl::data::TensorDataset data;
  int64_t batch_size;
  int64_t epochs;
  std::function<std::pair<tl::Model, std::shared_ptr<torch::nn::Module>>()> make_model;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The loop a careful user writes by hand: the same per-epoch permutation and
// index_select batches as trainloop, running loss and accuracy as tensors.
double hand_written(const Workload& w, int64_t epochs, double* final_accuracy) {
  torch::manual_seed(0);
  auto [model, module] = w.make_model();
  torch::optim::SGD optimizer(module->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  const auto start = std::chrono::steady_clock::now();
  const int64_t n = w.data.size();
  const int64_t batches = (n + w.batch_size - 1) / w.batch_size;
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    module->train();
    const auto order = tl::data::epoch_permutation(n, 1, epoch);
    auto loss_sum = torch::zeros({}, torch::kDouble);
    auto correct = torch::zeros({}, torch::kLong);
    for (int64_t b = 0; b < batches; ++b) {
      const auto index = order.narrow(0, b * w.batch_size, std::min(w.batch_size, n - b * w.batch_size));
      const auto inputs = w.data.inputs.index_select(0, index);
      const auto targets = w.data.targets.index_select(0, index);
      const auto outputs = model.forward(inputs);
      const auto loss = torch::nn::functional::cross_entropy(outputs, targets);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.detach() * inputs.size(0);
      correct += outputs.detach().argmax(1).eq(targets).sum();
    }
    *final_accuracy = correct.item<double>() / n;
    (void)(loss_sum.item<double>() / n);
  }
  return seconds_since(start);
}

// `log_dir` empty: progress only; otherwise also the CSV log (a row per
// batch), TensorBoard (every 10 steps) and the SVG plot, written there.
double with_trainloop(const Workload& w, int64_t epochs, std::FILE* sink, const std::string& log_dir,
                      double* final_accuracy) {
  torch::manual_seed(0);
  auto [model, module] = w.make_model();
  torch::optim::SGD optimizer(module->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  std::vector<std::shared_ptr<tl::Callback>> callbacks{
      tl::callbacks::progress(tl::callbacks::ProgressOptions().stream(sink))};
  if (!log_dir.empty()) {
    callbacks.push_back(tl::callbacks::csv_logger(
        tl::callbacks::CsvLoggerOptions(log_dir + "/log.csv").append(false)));
    callbacks.push_back(tl::callbacks::tensorboard(
        tl::callbacks::TensorBoardOptions().log_dir(log_dir + "/tensorboard")));
    callbacks.push_back(tl::callbacks::plot(tl::callbacks::PlotOptions(log_dir + "/curves.svg")));
  }
  tl::TrainingLoop loop(tl::data::Epochs(w.data, w.batch_size).seed(1), nullptr, optimizer,
                        tl::losses::cross_entropy, {tl::metrics::accuracy()}, callbacks);
  const auto start = std::chrono::steady_clock::now();
  loop.fit(model, epochs, torch::kCPU);
  *final_accuracy = loop.state().metric("accuracy");
  return seconds_since(start);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1;
  int repeats = 7;
  int64_t examples = 12800;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  CLI::App app("Times trainloop's fit against a hand-written LibTorch loop.", "loop_overhead");
  app.add_option("--threads", threads, "LibTorch threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--repeats", repeats, "alternating repetitions of each loop")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--examples", examples, "training examples per workload")->check(CLI::Range(int64_t{64}, int64_t{60000}))->capture_default_str();
  app.add_option("--data-dir", data_dir, "Fashion-MNIST (random images of the same shape if missing)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);

  tl::data::TensorDataset images;
  if (std::filesystem::exists(data_dir)) {
    auto train = tl::data::fashion_mnist(data_dir).first;
    images = tl::data::TensorDataset(train.inputs.narrow(0, 0, examples), train.targets.narrow(0, 0, examples));
  } else {
    torch::manual_seed(1);
    images = tl::data::TensorDataset(torch::rand({examples, 1, 28, 28}), torch::randint(0, 10, {examples}));
  }
  torch::manual_seed(2);
  const auto features = torch::randn({examples, 64});
  const tl::data::TensorDataset table(features, features.narrow(1, 0, 10).argmax(1));

  const std::vector<Workload> workloads{
      {"LeNet-5, batch 64", images, 64, 1,
       [] {
         tl::examples::LeNet m;
         return std::make_pair(tl::Model(m), std::shared_ptr<torch::nn::Module>(m.ptr()));
       }},
      {"tiny MLP 64-32-10, batch 32", table, 32, 10,
       [] {
         TinyMlp m;
         return std::make_pair(tl::Model(m), std::shared_ptr<torch::nn::Module>(m.ptr()));
       }},
  };
  std::FILE* sink = std::fopen("/dev/null", "w");
  std::printf("threads %d, %d repetitions, %lld examples per epoch, LibTorch %s\n", threads, repeats,
              static_cast<long long>(examples), TORCH_VERSION);
  const std::string log_dir =
      (std::filesystem::temp_directory_path() / ("trainloop_bench_" + std::to_string(getpid()))).string();
  for (const auto& w : workloads) {
    std::vector<double> hand, ours, logged, ratios, logged_ratios;
    double hand_accuracy = 0, our_accuracy = 0, logged_accuracy = 0;
    hand_written(w, 1, &hand_accuracy);  // warm-up: allocator, thread pool, caches
    with_trainloop(w, 1, sink, "", &our_accuracy);
    for (int r = 0; r < repeats; ++r) {
      // Rotate which loop goes first so drift in machine load hits all three.
      for (int k = 0; k < 3; ++k) {
        switch ((r + k) % 3) {
          case 0: hand.push_back(hand_written(w, w.epochs, &hand_accuracy)); break;
          case 1: ours.push_back(with_trainloop(w, w.epochs, sink, "", &our_accuracy)); break;
          default:
            logged.push_back(with_trainloop(w, w.epochs, sink, log_dir, &logged_accuracy));
            std::filesystem::remove_all(log_dir);
        }
      }
      ratios.push_back(ours.back() / hand.back());
      logged_ratios.push_back(logged.back() / hand.back());
    }
    std::printf("%-30s %lld epoch(s): hand-written %.3f s | trainloop %.3f s, ratio %.3f "
                "(per-pair median %.3f, min %.3f, max %.3f) | with CSV+TensorBoard+plot %.3f s, "
                "ratio %.3f (per-pair median %.3f) | accuracy %.4f %.4f %.4f\n",
                w.name.c_str(), static_cast<long long>(w.epochs), median(hand), median(ours),
                median(ours) / median(hand), median(ratios),
                *std::min_element(ratios.begin(), ratios.end()),
                *std::max_element(ratios.begin(), ratios.end()), median(logged),
                median(logged) / median(hand), median(logged_ratios), hand_accuracy, our_accuracy,
                logged_accuracy);
    std::fflush(stdout);
  }
  std::fclose(sink);
  return 0;
}
