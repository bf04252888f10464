// How fit's cost per step grows: with the number of steps (1k, 10k, 100k
// of a tiny model, where the loop's own work shows most), with the number of
// callbacks (0, 5, 20 that do nothing), and what happens to resident memory
// over many epochs with the usual callbacks writing. Prints one line
// `RESULT {json}` for bench/driver.py.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common.h"

namespace tl = trainloop;
namespace bench = trainloop::bench;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kBatch = 8;
constexpr int64_t kStepsPerEpoch = 1000;

/// 16 features, 8 hidden units, 4 classes: a step is a few dozen tiny ATen
/// calls, so anything the loop adds per step is as visible as it can be.
struct TinyImpl : torch::nn::Module {
  TinyImpl()
      : hidden(register_module("hidden", torch::nn::Linear(16, 8))),
        out(register_module("out", torch::nn::Linear(8, 4))) {}
  torch::Tensor forward(torch::Tensor x) { return out(torch::relu(hidden(x))); }
  torch::nn::Linear hidden, out;
};
TORCH_MODULE(Tiny);

/// A callback that does nothing, for the cost of the event dispatch itself.
class NoOp : public tl::Callback {
 public:
  void on_event(tl::Event /*event*/, tl::TrainingLoop& /*loop*/) override {}
  std::string state_key() const override { return "noop"; }
};

tl::data::TensorDataset tiny_data() {
  torch::manual_seed(3);
  const auto x = torch::randn({kBatch * kStepsPerEpoch, 16});
  return {x, x.narrow(1, 0, 4).argmax(1)};
}

// The hand-written loop of loop_overhead.cpp on the tiny model.
bench::Times hand_written(const tl::data::TensorDataset& data, int64_t epochs) {
  torch::manual_seed(0);
  Tiny net;
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.01));
  const bench::Stopwatch stopwatch;
  const int64_t n = data.size();
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    const auto order = tl::data::epoch_permutation(n, 1, epoch);
    auto loss_sum = torch::zeros({}, torch::kDouble);
    auto correct = torch::zeros({}, torch::kLong);
    for (int64_t first = 0; first < n; first += kBatch) {
      const auto index = order.narrow(0, first, kBatch);
      const auto inputs = data.inputs.index_select(0, index);
      const auto targets = data.targets.index_select(0, index);
      const auto outputs = net->forward(inputs);
      const auto loss = torch::nn::functional::cross_entropy(outputs, targets);
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.detach() * kBatch;
      correct += outputs.detach().argmax(1).eq(targets).sum();
    }
    (void)loss_sum.item<double>();
    (void)correct.item<double>();
  }
  return stopwatch.elapsed();
}

// fit with loss and accuracy and `callbacks`.
bench::Times with_trainloop(const tl::data::TensorDataset& data, int64_t epochs,
                      std::vector<std::shared_ptr<tl::Callback>> callbacks) {
  torch::manual_seed(0);
  Tiny net;
  torch::optim::SGD optimizer(net->parameters(), torch::optim::SGDOptions(0.01));
  const bench::Stopwatch stopwatch;
  tl::TrainingLoop loop(tl::data::Epochs(data, kBatch).seed(1), nullptr, optimizer,
                        tl::losses::cross_entropy, {tl::metrics::accuracy()}, std::move(callbacks));
  loop.fit(net, epochs, torch::kCPU);
  return stopwatch.elapsed();
}

// Progress to a file, a CSV row per batch, TensorBoard every 10 steps.
std::vector<std::shared_ptr<tl::Callback>> usual_callbacks(const std::string& dir, std::FILE* progress) {
  fs::create_directories(dir);
  return {tl::callbacks::progress(tl::callbacks::ProgressOptions().stream(progress)),
          tl::callbacks::csv_logger(tl::callbacks::CsvLoggerOptions(dir + "/log.csv").append(false)),
          tl::callbacks::tensorboard(tl::callbacks::TensorBoardOptions().log_dir(dir + "/tensorboard"))};
}

// `name`: the wall seconds of each run; `name_cpu`: the CPU seconds.
void add_times(bench::JsonLine& row, const std::string& name, const std::vector<bench::Times>& times) {
  std::vector<double> wall, cpu;
  for (const auto& t : times) {
    wall.push_back(t.wall);
    cpu.push_back(t.cpu);
  }
  row.add(name, wall).add(name + "_cpu", cpu);
}

// Short fits are the noisiest on a machine whose speed drifts over seconds,
// so they get more rounds: repeats × √(100k / steps), at least repeats.
int rounds_for(int repeats, int64_t steps) {
  const double scale = std::sqrt(100000.0 / static_cast<double>(std::max<int64_t>(steps, 1)));
  return std::max(repeats, static_cast<int>(std::lround(repeats * scale)));
}

std::vector<std::shared_ptr<tl::Callback>> no_ops(int count) {
  std::vector<std::shared_ptr<tl::Callback>> callbacks;
  for (int i = 0; i < count; ++i) callbacks.push_back(std::make_shared<NoOp>());
  return callbacks;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, repeats = 3;
  std::vector<int64_t> step_counts{1000, 10000, 100000};
  int64_t callback_steps = 10000, memory_epochs = 100;
  std::string log_dir;
  CLI::App app("Per-step cost of fit against step count and callback count; memory over epochs.",
               "bench_scaling");
  app.add_option("--threads", threads, "LibTorch threads")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--repeats", repeats, "alternating rounds of the longest fits (shorter ones get more)")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_option("--steps", step_counts, "step counts (multiples of 1000)")->capture_default_str();
  app.add_option("--callback-steps", callback_steps, "steps of the callback-count runs")->capture_default_str();
  app.add_option("--memory-epochs", memory_epochs, "epochs of 1000 steps of the memory run")->capture_default_str();
  app.add_option("--log-dir", log_dir, "where the callbacks write (default: a temporary directory)");
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  if (log_dir.empty()) log_dir = (fs::temp_directory_path() / fmt::format("trainloop_scaling_{}", getpid())).string();
  std::FILE* progress = std::fopen("/dev/null", "w");
  const auto data = tiny_data();
  hand_written(data, 1);  // warm-up
  with_trainloop(data, 1, {});

  // Step counts: hand-written, fit without callbacks, fit with the usual ones.
  std::string steps_json = "[";
  for (size_t s = 0; s < step_counts.size(); ++s) {
    const int64_t epochs = std::max<int64_t>(1, step_counts[s] / kStepsPerEpoch);
    std::vector<bench::Times> times[3];
    for (int r = 0; r < rounds_for(repeats, epochs * kStepsPerEpoch); ++r) {
      for (int k = 0; k < 3; ++k) {
        switch ((k + r) % 3) {
          case 0: times[0].push_back(hand_written(data, epochs)); break;
          case 1: times[1].push_back(with_trainloop(data, epochs, {})); break;
          default:
            times[2].push_back(with_trainloop(data, epochs, usual_callbacks(log_dir + "/steps", progress)));
            fs::remove_all(log_dir + "/steps");
        }
      }
    }
    bench::JsonLine row;
    row.add("steps", epochs * kStepsPerEpoch);
    const char* names[3] = {"hand", "fit", "fit_usual_callbacks"};
    for (int i = 0; i < 3; ++i) add_times(row, names[i], times[i]);
    steps_json += (s ? ", " : "") + row.str();
  }

  // Callback counts: fit with 0, 5, 20 callbacks that do nothing.
  const std::vector<int> counts{0, 5, 20};
  std::vector<std::vector<bench::Times>> by_count(counts.size());
  const int64_t callback_epochs = std::max<int64_t>(1, callback_steps / kStepsPerEpoch);
  for (int r = 0; r < rounds_for(repeats, callback_epochs * kStepsPerEpoch); ++r) {
    for (size_t k = 0; k < counts.size(); ++k) {
      const size_t c = (k + static_cast<size_t>(r)) % counts.size();
      by_count[c].push_back(with_trainloop(data, callback_epochs, no_ops(counts[c])));
    }
  }
  std::string callbacks_json = "[";
  for (size_t c = 0; c < counts.size(); ++c) {
    bench::JsonLine row;
    row.add("callbacks", static_cast<int64_t>(counts[c])).add("steps", callback_epochs * kStepsPerEpoch);
    add_times(row, "seconds", by_count[c]);
    callbacks_json += (c ? ", " : "") + row.str();
  }

  // Resident memory at every epoch end of a long fit with the usual callbacks.
  std::vector<double> rss_kb;
  auto callbacks = usual_callbacks(log_dir + "/memory", progress);
  callbacks.push_back(tl::callbacks::lambda([&](tl::Event event, tl::TrainingLoop&) {
    if (event == tl::Event::epoch_end) rss_kb.push_back(static_cast<double>(bench::proc_status_kb("VmRSS")));
  }, "rss"));
  with_trainloop(data, memory_epochs, callbacks);
  fs::remove_all(log_dir);
  std::fclose(progress);

  std::printf("RESULT %s\n", bench::JsonLine()
                                 .add("threads", static_cast<int64_t>(torch::get_num_threads()))
                                 .add("batch_size", kBatch)
                                 .raw("step_counts", steps_json + "]")
                                 .raw("callback_counts", callbacks_json + "]")
                                 .add("memory_steps_per_epoch", kStepsPerEpoch)
                                 .add("rss_kb_per_epoch", rss_kb)
                                 .add("peak_rss_kb", bench::proc_status_kb("VmHWM"))
                                 .str()
                                 .c_str());
  return 0;
}
