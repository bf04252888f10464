// Measures what trainloop's fit costs over a hand-written LibTorch loop and
// over LibTorch's own torch::data DataLoader, on the three workloads of
// workloads.h, and writes the files the Python implementations (workloads.py)
// read so that every implementation trains the same model from the same
// weights on the same batches in the same order.
//
//   loop_overhead export --out DIR           split, orders, initial weights
//   loop_overhead run --data DIR --workload w2 --impl trainloop --runs 3
//   loop_overhead ablation --data DIR --workload w2 --repeats 21
//   loop_overhead pairs --data DIR --workload w1 --repeats 40
//   loop_overhead noop                       start-up cost of the binary alone
//
// `run`, `ablation` and `pairs` print one line `RESULT {json}` for bench/driver.py.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "common.h"
#include "torch_data.h"
#include "workloads.h"

namespace tl = trainloop;
namespace bench = trainloop::bench;
namespace fs = std::filesystem;

namespace {

const double kProcessStart = bench::monotonic_seconds();  // before main, after loading

/// What one training run measured.
struct Outcome {
  double seconds = 0;      ///< wall
  double cpu_seconds = 0;  ///< CPU time of the process
  double test_accuracy = 0;
  double train_loss = 0;
  int64_t steps = 0;
};

// ---------------------------------------------------------------- export ---

void export_data(const std::string& out, int64_t fashion_examples) {
  fs::create_directories(out);
  // Digits: 1797 rows of 64 pixel counts and the digit; stratified 80/20 split
  // with seed 42, standardized with the training part's statistics, as the
  // tabular examples do.
  const auto table = tl::data::read_csv_table(
      tl::examples::kSklearnData + "digits.csv.gz",
      tl::data::CsvOptions("65").header(false).labels(tl::data::Labels::class_indices));
  const auto parts = tl::data::train_test_split_indices(table.dataset, 0.2, 42, /*stratify=*/true);
  auto train = tl::data::subset(table.dataset, parts.train);
  auto test = tl::data::subset(table.dataset, parts.test);
  const tl::data::Standardizer standardizer(train.inputs);
  train = standardizer.transform(train);
  test = standardizer.transform(test);

  // Every epoch's order, for the Python side, which must not re-implement
  // our generator; the C++ side checks it draws the same.
  const auto orders = [](int64_t n, int64_t epochs) {
    std::vector<torch::Tensor> rows;
    for (int64_t e = 0; e < epochs; ++e) rows.push_back(tl::data::epoch_permutation(n, bench::kOrderSeed, e));
    return torch::stack(rows);
  };
  constexpr int64_t kDigitsEpochs = 100;  // W2 uses 20; room for longer runs
  bench::save_pickle(bench::tensor_dict({{"x_train", train.inputs},
                                         {"y_train", train.targets},
                                         {"x_test", test.inputs},
                                         {"y_test", test.targets},
                                         {"orders", orders(train.size(), kDigitsEpochs)}}),
                     out + "/digits.pt");

  auto [images, test_images] = tl::data::fashion_mnist("/usr/share/datasets/fashion-mnist");
  if (fashion_examples < images.size()) {
    images = tl::data::TensorDataset(images.inputs.narrow(0, 0, fashion_examples),
                                     images.targets.narrow(0, 0, fashion_examples));
    const int64_t tests = std::min<int64_t>(test_images.size(), std::max<int64_t>(fashion_examples / 6, 1));
    test_images = tl::data::TensorDataset(test_images.inputs.narrow(0, 0, tests),
                                          test_images.targets.narrow(0, 0, tests));
  }
  constexpr int64_t kFashionEpochs = 5;
  // As bytes, a quarter of the floats' size: every reader scales them back
  // with the same `to(float32).div_(255)` that fashion_mnist used.
  const auto bytes = [](const torch::Tensor& images) {
    return images.mul(255).round_().to(torch::kUInt8).contiguous();
  };
  bench::save_pickle(bench::tensor_dict({{"x_train", bytes(images.inputs)},
                                         {"y_train", images.targets.contiguous()},
                                         {"x_test", bytes(test_images.inputs)},
                                         {"y_test", test_images.targets.contiguous()},
                                         {"orders", orders(images.size(), kFashionEpochs)}}),
                     out + "/fashion.pt");

  // Initial weights drawn once by LibTorch's default initialization.
  torch::manual_seed(0);
  bench::save_pickle(bench::parameters_of(*bench::make_mlp()), out + "/mlp_init.pt");
  torch::manual_seed(0);
  bench::save_pickle(bench::parameters_of(*tl::examples::LeNet()), out + "/lenet_init.pt");
  std::printf("exported digits (%lld training, %lld test rows), Fashion-MNIST (%lld, %lld) to %s\n",
              static_cast<long long>(train.size()), static_cast<long long>(test.size()),
              static_cast<long long>(images.size()), static_cast<long long>(test_images.size()),
              out.c_str());
}

// ------------------------------------------------------- implementations ---

torch::Tensor order_of(const bench::Spec& spec, const bench::Data& data, int64_t epoch) {
  if (!spec.shuffle) return torch::Tensor();
  return tl::data::epoch_permutation(data.train.size(), bench::kOrderSeed, epoch);
}

// The loop a careful user writes by hand: the epoch's permutation cut with
// index_select (a view of the whole set when full batch), the running loss
// and the correct count kept as tensors and read once per epoch, validation
// the same way without gradients.
template <class Net>
Outcome hand_written(const bench::Spec& spec, const bench::Data& data, Net net) {
  Outcome outcome;
  const bench::Stopwatch stopwatch;
  auto optimizer = bench::make_optimizer(spec, net->parameters());
  const int64_t n = data.train.size();
  const int64_t batch_size = bench::batch_size_of(spec, data);
  const int64_t batches = (n + batch_size - 1) / batch_size;
  const int64_t validation_batch = bench::validation_batch_size_of(spec, data);
  const auto validate = [&] {
    torch::NoGradGuard no_grad;
    net->eval();
    const int64_t m = data.test.size();
    auto correct = torch::zeros({}, torch::kLong);
    auto loss_sum = torch::zeros({}, torch::kDouble);
    for (int64_t first = 0; first < m; first += validation_batch) {
      const int64_t length = std::min(validation_batch, m - first);
      const auto inputs = data.test.inputs.narrow(0, first, length);
      const auto targets = data.test.targets.narrow(0, first, length);
      const auto outputs = net->forward(inputs);
      loss_sum += torch::nn::functional::cross_entropy(outputs, targets) * length;
      correct += outputs.argmax(1).eq(targets).sum();
    }
    (void)(loss_sum.item<double>() / m);
    return correct.item<double>() / m;
  };
  for (int64_t epoch = 0; epoch < spec.epochs; ++epoch) {
    net->train();
    const auto order = order_of(spec, data, epoch);
    auto loss_sum = torch::zeros({}, torch::kDouble);
    auto correct = torch::zeros({}, torch::kLong);
    for (int64_t b = 0; b < batches; ++b) {
      const int64_t length = std::min(batch_size, n - b * batch_size);
      torch::Tensor inputs, targets;
      if (order.defined()) {
        const auto index = order.narrow(0, b * batch_size, length);
        inputs = data.train.inputs.index_select(0, index);
        targets = data.train.targets.index_select(0, index);
      } else {
        inputs = data.train.inputs.narrow(0, b * batch_size, length);
        targets = data.train.targets.narrow(0, b * batch_size, length);
      }
      const auto outputs = net->forward(inputs);
      const auto loss = torch::nn::functional::cross_entropy(outputs, targets);
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      loss_sum += loss.detach() * length;
      correct += outputs.detach().argmax(1).eq(targets).sum();
      ++outcome.steps;
    }
    outcome.train_loss = loss_sum.item<double>() / n;
    (void)(correct.item<double>() / n);
    if (spec.validate) outcome.test_accuracy = validate();
  }
  if (!spec.validate) outcome.test_accuracy = validate();
  const bench::Times times = stopwatch.elapsed();
  outcome.seconds = times.wall;
  outcome.cpu_seconds = times.cpu;
  return outcome;
}

/// Which of trainloop's pieces a run switches on (the workloads use all).
struct Pieces {
  bool accuracy = true;
  bool progress = true;
  bool csv = true;
  bool tensorboard = true;
};

// fit with the usual callbacks: progress to a file, a CSV row per batch,
// TensorBoard every 10 steps, loss and accuracy metrics.
template <class Net>
Outcome with_trainloop(const bench::Spec& spec, const bench::Data& data, Net net,
                       const std::string& log_dir, const Pieces& pieces) {
  Outcome outcome;
  fs::create_directories(log_dir);
  std::FILE* progress_file = std::fopen((log_dir + "/progress.txt").c_str(), "w");
  if (progress_file == nullptr) throw tl::Error(fmt::format("{}: cannot create progress.txt", log_dir));
  const bench::Stopwatch stopwatch;
  auto optimizer = bench::make_optimizer(spec, net->parameters());
  std::vector<std::shared_ptr<tl::Callback>> callbacks;
  if (pieces.progress) {
    callbacks.push_back(tl::callbacks::progress(tl::callbacks::ProgressOptions().stream(progress_file)));
  }
  if (pieces.csv) {
    callbacks.push_back(tl::callbacks::csv_logger(
        tl::callbacks::CsvLoggerOptions(log_dir + "/log.csv").append(false)));
  }
  if (pieces.tensorboard) {
    callbacks.push_back(tl::callbacks::tensorboard(
        tl::callbacks::TensorBoardOptions().log_dir(log_dir + "/tensorboard")));
  }
  std::vector<std::shared_ptr<tl::Metric>> metrics;
  if (pieces.accuracy) metrics.push_back(tl::metrics::accuracy());
  const int64_t validation_batch = bench::validation_batch_size_of(spec, data);
  tl::TrainingLoop loop(
      tl::data::Epochs(data.train, bench::batch_size_of(spec, data)).shuffle(spec.shuffle).seed(bench::kOrderSeed),
      spec.validate ? tl::data::DataSource(tl::data::Batches(data.test, validation_batch)) : nullptr,
      *optimizer, tl::losses::cross_entropy, metrics, callbacks);
  loop.fit(net, spec.epochs, torch::kCPU);
  outcome.train_loss = loop.state().metric("loss");
  if (spec.validate) {
    outcome.test_accuracy = pieces.accuracy ? loop.state().metric("val_accuracy") : std::nan("");
  } else {
    const auto result = loop.evaluate(net, tl::data::Batches(data.test, validation_batch));
    outcome.test_accuracy = pieces.accuracy ? result.at("accuracy") : std::nan("");
  }
  outcome.steps = loop.state().global_step;
  const bench::Times times = stopwatch.elapsed();
  outcome.seconds = times.wall;
  outcome.cpu_seconds = times.cpu;
  std::fclose(progress_file);
  return outcome;
}

// The same hand-written loop fed by torch::data::make_data_loader with the
// Stack transform, no worker threads (its default).
template <class Net>
Outcome with_torch_data(const bench::Spec& spec, const bench::Data& data, Net net) {
  Outcome outcome;
  const bench::Stopwatch stopwatch;
  auto optimizer = bench::make_optimizer(spec, net->parameters());
  const int64_t n = data.train.size();
  auto order = std::make_shared<std::vector<size_t>>(static_cast<size_t>(n));
  std::iota(order->begin(), order->end(), size_t{0});
  using torch::data::transforms::Stack;
  auto train_loader = torch::data::make_data_loader(
      bench::Rows(data.train).map(Stack<>()), bench::GivenOrder(order),
      torch::data::DataLoaderOptions(static_cast<size_t>(bench::batch_size_of(spec, data))));
  auto test_loader = torch::data::make_data_loader<torch::data::samplers::SequentialSampler>(
      bench::Rows(data.test).map(Stack<>()),
      torch::data::DataLoaderOptions(static_cast<size_t>(bench::validation_batch_size_of(spec, data))));
  const auto validate = [&] {
    torch::NoGradGuard no_grad;
    net->eval();
    auto correct = torch::zeros({}, torch::kLong);
    auto loss_sum = torch::zeros({}, torch::kDouble);
    for (auto& batch : *test_loader) {
      const auto outputs = net->forward(batch.data);
      loss_sum += torch::nn::functional::cross_entropy(outputs, batch.target) * batch.data.size(0);
      correct += outputs.argmax(1).eq(batch.target).sum();
    }
    (void)(loss_sum.item<double>() / data.test.size());
    return correct.item<double>() / data.test.size();
  };
  for (int64_t epoch = 0; epoch < spec.epochs; ++epoch) {
    net->train();
    if (spec.shuffle) {
      const auto permutation = order_of(spec, data, epoch);
      const int64_t* p = permutation.data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) (*order)[static_cast<size_t>(i)] = static_cast<size_t>(p[i]);
    }
    auto loss_sum = torch::zeros({}, torch::kDouble);
    auto correct = torch::zeros({}, torch::kLong);
    for (auto& batch : *train_loader) {
      const auto outputs = net->forward(batch.data);
      const auto loss = torch::nn::functional::cross_entropy(outputs, batch.target);
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      loss_sum += loss.detach() * batch.data.size(0);
      correct += outputs.detach().argmax(1).eq(batch.target).sum();
      ++outcome.steps;
    }
    outcome.train_loss = loss_sum.item<double>() / n;
    (void)(correct.item<double>() / n);
    if (spec.validate) outcome.test_accuracy = validate();
  }
  if (!spec.validate) outcome.test_accuracy = validate();
  const bench::Times times = stopwatch.elapsed();
  outcome.seconds = times.wall;
  outcome.cpu_seconds = times.cpu;
  return outcome;
}

// One untimed step of a throwaway copy of the model, the same in every
// implementation (workloads.py does the same): LibTorch's thread pool,
// allocator and kernels are set up before the clock starts.
void warm_up(const bench::Spec& spec, const bench::Data& data) {
  bench::with_model(spec, data, [&](auto net) {
    auto optimizer = bench::make_optimizer(spec, net->parameters());
    const int64_t length = std::min(bench::batch_size_of(spec, data), data.train.size());
    const auto loss = torch::nn::functional::cross_entropy(
        net->forward(data.train.inputs.narrow(0, 0, length)), data.train.targets.narrow(0, 0, length));
    loss.backward();
    optimizer->step();
    torch::NoGradGuard no_grad;
    net->forward(data.test.inputs.narrow(0, 0, std::min(bench::validation_batch_size_of(spec, data),
                                                         data.test.size())));
    return 0;
  });
}

void check_orders(const bench::Spec& spec, const bench::Data& data) {
  if (!spec.shuffle) return;
  if (data.orders.size(0) < spec.epochs) {
    throw tl::Error(fmt::format("the export holds {} epoch orders, {} needs {}", data.orders.size(0),
                                spec.name, spec.epochs));
  }
  for (int64_t e = 0; e < spec.epochs; ++e) {
    if (!torch::equal(order_of(spec, data, e), data.orders[e])) {
      throw tl::Error(fmt::format("exported order of epoch {} differs from epoch_permutation", e));
    }
  }
}

Outcome run_once(const std::string& impl, const bench::Spec& spec, const bench::Data& data,
                 const std::string& log_dir) {
  return bench::with_model(spec, data, [&](auto net) {
    if (impl == "hand") return hand_written(spec, data, net);
    if (impl == "trainloop") return with_trainloop(spec, data, net, log_dir, Pieces{});
    if (impl == "torchdata") return with_torch_data(spec, data, net);
    throw tl::Error(fmt::format("unknown implementation \"{}\", expected hand, trainloop or torchdata", impl));
  });
}

std::string outcome_json(const Outcome& o) {
  return bench::JsonLine()
      .add("seconds", o.seconds)
      .add("cpu_seconds", o.cpu_seconds)
      .add("test_accuracy", o.test_accuracy)
      .add("train_loss", o.train_loss)
      .add("steps", o.steps)
      .str();
}

// ------------------------------------------------------------ alternation ---

/// One implementation in an alternation: the hand-written loop, or fit with
/// the given pieces.
struct Config {
  std::string name;
  bool hand_written = false;
  Pieces pieces;
};

// Trains each configuration once per round, in one process, the starting
// configuration rotating each round so drift in load hits all alike; every
// round's times are also kept as ratios to the first configuration's in the
// same round. One untimed round first.
void alternate(const bench::Spec& spec, const bench::Data& data, const std::vector<Config>& configs,
               int repeats, const std::string& log_dir) {
  std::vector<std::vector<double>> seconds(configs.size()), cpu(configs.size());
  std::vector<std::vector<double>> ratios(configs.size()), cpu_ratios(configs.size());
  std::vector<std::vector<double>> accuracies(configs.size());
  int64_t steps = 0;
  for (int r = -1; r < repeats; ++r) {
    std::vector<Outcome> round(configs.size());
    for (size_t k = 0; k < configs.size(); ++k) {
      const size_t c = (k + static_cast<size_t>(std::max(r, 0))) % configs.size();
      round[c] = bench::with_model(spec, data, [&](auto net) {
        return configs[c].hand_written ? hand_written(spec, data, net)
                                       : with_trainloop(spec, data, net, log_dir, configs[c].pieces);
      });
      fs::remove_all(log_dir);
      steps = round[c].steps;
    }
    if (r < 0) continue;
    for (size_t c = 0; c < configs.size(); ++c) {
      seconds[c].push_back(round[c].seconds);
      cpu[c].push_back(round[c].cpu_seconds);
      ratios[c].push_back(round[c].seconds / round[0].seconds);
      cpu_ratios[c].push_back(round[c].cpu_seconds / round[0].cpu_seconds);
      accuracies[c].push_back(round[c].test_accuracy);
    }
  }
  bench::JsonLine result;
  result.add("workload", spec.name).add("repeats", static_cast<int64_t>(repeats)).add("steps", steps);
  std::string list = "[";
  for (size_t c = 0; c < configs.size(); ++c) {
    list += (c ? ", " : "") + bench::JsonLine()
                                  .add("name", configs[c].name)
                                  .add("seconds", seconds[c])
                                  .add("cpu_seconds", cpu[c])
                                  .add("test_accuracy", accuracies[c])
                                  .add("paired_ratios", ratios[c])
                                  .add("paired_cpu_ratios", cpu_ratios[c])
                                  .str();
  }
  result.raw("configs", list + "]");
  std::printf("RESULT %s\n", result.str().c_str());
}

// The hand-written loop against fit built up piece by piece, so the cost of
// each piece shows as a difference of medians.
const std::vector<Config> kAblation{
    {"hand", true, {}},
    {"fit_loss_only", false, Pieces{false, false, false, false}},
    {"plus_accuracy", false, Pieces{true, false, false, false}},
    {"plus_progress", false, Pieces{true, true, false, false}},
    {"plus_csv", false, Pieces{true, true, true, false}},
    {"plus_tensorboard", false, Pieces{true, true, true, true}},
};

// The hand-written loop and fit as the workloads run it, one right after the
// other: each pair of trainings sees the machine at nearly the same moment.
const std::vector<Config> kPairs{
    {"hand", true, {}},
    {"trainloop", false, Pieces{}},
};

}  // namespace

int main(int argc, char** argv) {
  const double main_start = bench::monotonic_seconds();
  CLI::App app("trainloop's fit against a hand-written LibTorch loop and torch::data.", "loop_overhead");
  app.require_subcommand(1);
  std::string out, data_dir, workload = "w2", impl = "hand", log_dir;
  int threads = 1, runs = 1, repeats = 15;
  int64_t fashion_examples = 60000, epochs = 0;
  auto* export_cmd = app.add_subcommand("export", "write the split, orders and initial weights");
  export_cmd->add_option("--out", out, "directory")->required();
  export_cmd->add_option("--fashion-examples", fashion_examples, "Fashion-MNIST training examples kept")
      ->check(CLI::Range(int64_t{64}, int64_t{60000}))->capture_default_str();
  auto* run_cmd = app.add_subcommand("run", "train one workload with one implementation");
  auto* ablation_cmd = app.add_subcommand("ablation", "fit piece by piece against the hand-written loop");
  auto* pairs_cmd = app.add_subcommand("pairs", "the hand-written loop and fit, alternating in one process");
  for (auto* cmd : {run_cmd, ablation_cmd, pairs_cmd}) {
    cmd->add_option("--data", data_dir, "directory written by export")->required();
    cmd->add_option("--workload", workload, "w1, w2 or w3")->capture_default_str();
    cmd->add_option("--threads", threads, "LibTorch threads")->check(CLI::Range(1, 256))->capture_default_str();
    cmd->add_option("--log-dir", log_dir, "where trainloop's callbacks write (default: a temporary directory)");
    cmd->add_option("--epochs", epochs, "override the workload's epochs (0: keep)")->check(CLI::Range(int64_t{0}, int64_t{1000}));
  }
  run_cmd->add_option("--impl", impl, "hand, trainloop or torchdata")->capture_default_str();
  run_cmd->add_option("--runs", runs, "trainings in this process, each from the initial weights")
      ->check(CLI::Range(1, 1000))->capture_default_str();
  for (auto* cmd : {ablation_cmd, pairs_cmd}) {
    cmd->add_option("--repeats", repeats, "rounds of all configurations")->check(CLI::Range(1, 1000))->capture_default_str();
  }
  app.add_subcommand("noop", "exit at once (the start-up cost of this binary)");
  CLI11_PARSE(app, argc, argv);

  try {
    if (export_cmd->parsed()) {
      export_data(out, fashion_examples);
      return 0;
    }
    if (!run_cmd->parsed() && !ablation_cmd->parsed() && !pairs_cmd->parsed()) {
      std::printf("RESULT %s\n", bench::JsonLine()
                                     .add("t_main", main_start)
                                     .add("torch_version", std::string(TORCH_VERSION))
                                     .add("threads", static_cast<int64_t>(torch::get_num_threads()))
                                     .str()
                                     .c_str());
      return 0;
    }
    torch::set_num_threads(threads);
    bench::Spec spec = bench::spec_of(workload);
    if (epochs > 0) spec.epochs = epochs;
    if (log_dir.empty()) {
      log_dir = (fs::temp_directory_path() / fmt::format("trainloop_bench_{}", getpid())).string();
    }
    const bench::Data data = bench::load_data(data_dir, spec);
    check_orders(spec, data);
    const double loaded = bench::monotonic_seconds();
    warm_up(spec, data);
    const double warm = bench::monotonic_seconds();
    if (ablation_cmd->parsed() || pairs_cmd->parsed()) {
      alternate(spec, data, ablation_cmd->parsed() ? kAblation : kPairs, repeats, log_dir + "/alternation");
      return 0;
    }
    std::string list = "[";
    for (int r = 0; r < runs; ++r) {
      const std::string dir = fmt::format("{}/run{}", log_dir, r);
      list += (r ? ", " : "") + outcome_json(run_once(impl, spec, data, dir));
    }
    const double end = bench::monotonic_seconds();
    std::printf("RESULT %s\n", bench::JsonLine()
                                   .add("impl", impl)
                                   .add("workload", spec.name)
                                   .add("threads", static_cast<int64_t>(torch::get_num_threads()))
                                   .add("t_static_init", kProcessStart)
                                   .add("t_main", main_start)
                                   .add("t_imported", main_start)
                                   .add("t_loaded", loaded)
                                   .add("t_warm", warm)
                                   .add("t_end", end)
                                   .add("peak_rss_kb", bench::proc_status_kb("VmHWM"))
                                   .raw("runs", list + "]")
                                   .str()
                                   .c_str());
    std::fflush(stdout);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loop_overhead: %s\n", e.what());
    return 1;
  }
  return 0;
}
