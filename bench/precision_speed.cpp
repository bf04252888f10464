// What mixed precision buys on the CPU: the time per training step of
//   (1) a hand-written float32 LibTorch loop,
//   (2) trainloop's fit in float32,
//   (3) trainloop's fit with bfloat16 autocast (`mixed_precision(kBFloat16)`),
// paired in one process on four workloads (an MLP on scikit-learn's digits,
// the demo's LeNet-5 and the resnet example's ResNet on Fashion-MNIST, and
// char_gpt's GPT on Debian's fortunes), and the validation loss and metric
// each reaches after the same steps from the same initial weights on the
// same batches.
//
//   precision_speed [--rounds 5] [--steps 0] [--workloads mlp,lenet,resnet,char_gpt]
//
// One thread for everything: LibTorch's, and OpenBLAS's own pool, which
// Debian's LibTorch uses for float32 matrix products and which ignores
// torch::set_num_threads. Each round runs the three
// implementations once per workload, in an order that rotates from round to
// round; the table gives the median over rounds of the per-step CPU time
// (CLOCK_PROCESS_CPUTIME_ID, the primary measure on a shared machine) and
// wall time, and the median over rounds of each round's paired ratio to the
// hand-written loop. Validation is computed once per implementation, in
// float32, by the same hand-written code, so it measures what training in
// bfloat16 did to the weights, not the precision of the evaluation.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common.h"
#include "gpt.h"
#include "lenet.h"
#include "resnet.h"
#include "tabular.h"

namespace tl = trainloop;
namespace bench = trainloop::bench;
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kSeed = 42;

using MakeOptimizer =
    std::function<std::unique_ptr<torch::optim::Optimizer>(const std::vector<torch::Tensor>&)>;

/// One workload: a model drawn from the same seed every time, the training
/// batches in order (exactly steps * batch_size rows: batch s is rows
/// [s * batch_size, (s + 1) * batch_size)), and the validation set.
struct Workload {
  std::string name;
  std::string description;
  std::function<tl::Model()> make_model;
  MakeOptimizer make_optimizer;
  tl::LossFunction loss;
  int64_t batch_size = 0;
  int64_t steps = 0;
  tl::data::TensorDataset train;
  tl::data::TensorDataset validation;
  int64_t validation_batch_size = 256;
  bool language_model = false;  ///< perplexity, else accuracy
};

/// `count` rows of `data` in the order of epoch_permutation(n, seed, 0),
/// then epoch 1's, and so on: the batches every implementation trains on.
tl::data::TensorDataset training_rows(const tl::data::TensorDataset& data, int64_t count) {
  std::vector<torch::Tensor> orders;
  for (int64_t have = 0, epoch = 0; have < count; have += data.size(), ++epoch) {
    orders.push_back(tl::data::epoch_permutation(data.size(), kSeed, epoch));
  }
  const torch::Tensor rows = torch::cat(orders).narrow(0, 0, count);
  return tl::data::subset(data, rows);
}

/// The first `count` rows of a fixed random order (all when fewer).
tl::data::TensorDataset first_of_order(const tl::data::TensorDataset& data, int64_t count) {
  if (count >= data.size()) return data;
  return tl::data::subset(data, tl::data::epoch_permutation(data.size(), kSeed, 0).narrow(0, 0, count));
}

torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  return tl::losses::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

// ------------------------------------------------------------- workloads ---

// 64 pixel counts -> three hidden layers of 1024 (ReLU) -> 10 digits; batch
// 128, Adam 1e-3. The width is the brief's "1024-wide" MLP: a realistic
// hidden size for a dense network, not one picked for the result.
Workload mlp_workload(int64_t steps) {
  const auto table = tl::data::read_csv_table(
      tl::examples::kSklearnData + "digits.csv.gz",
      tl::data::CsvOptions("65").header(false).labels(tl::data::Labels::class_indices));
  auto [train, test] = tl::data::train_test_split(table.dataset, 0.2, kSeed, /*stratify=*/true);
  const tl::data::Standardizer standardizer(train.inputs);
  Workload w;
  w.name = "mlp";
  w.description = "MLP 64-1024-1024-1024-10 (ReLU) on scikit-learn digits (1437 training, 360 "
                  "validation rows), batch 128, Adam 1e-3";
  w.make_model = [] {
    torch::manual_seed(kSeed);
    return tl::Model(tl::examples::mlp(64, {1024, 1024, 1024}, 10));
  };
  w.make_optimizer = [](const std::vector<torch::Tensor>& p) {
    return std::make_unique<torch::optim::Adam>(p, torch::optim::AdamOptions(1e-3));
  };
  w.loss = tl::losses::cross_entropy;
  w.batch_size = 128;
  w.steps = steps > 0 ? steps : 100;
  w.train = training_rows(standardizer.transform(train), w.steps * w.batch_size);
  w.validation = standardizer.transform(test);
  return w;
}

// The demo: LeNet-5 on Fashion-MNIST, batch 64, SGD 0.05 with momentum 0.9
// (the demo's peak rate, here constant).
Workload lenet_workload(int64_t steps) {
  auto [train, test] = tl::data::fashion_mnist("/usr/share/datasets/fashion-mnist");
  Workload w;
  w.name = "lenet";
  w.description = "LeNet-5 (the demo) on Fashion-MNIST, batch 64, SGD 0.05 momentum 0.9; "
                  "validation: 2000 test images";
  w.make_model = [] {
    torch::manual_seed(kSeed);
    return tl::Model(tl::examples::LeNet());
  };
  w.make_optimizer = [](const std::vector<torch::Tensor>& p) {
    return std::make_unique<torch::optim::SGD>(p, torch::optim::SGDOptions(0.05).momentum(0.9));
  };
  w.loss = tl::losses::cross_entropy;
  w.batch_size = 64;
  w.steps = steps > 0 ? steps : 200;
  w.train = training_rows(train, w.steps * w.batch_size);
  w.validation = first_of_order(test, 2000);
  w.validation_batch_size = 1000;
  return w;
}

// The resnet example's default model, ResNet-20 (3 blocks per stage), on
// standardized Fashion-MNIST, batch 64, SGD 0.05 Nesterov momentum 0.9,
// weight decay 5e-4 (the example's optimizer at a constant rate).
Workload resnet_workload(int64_t steps) {
  auto [train, test] = tl::data::fashion_mnist("/usr/share/datasets/fashion-mnist");
  const torch::Tensor mean = train.inputs.mean({0, 2, 3}, /*keepdim=*/true);
  const torch::Tensor std = train.inputs.std({0, 2, 3}, /*unbiased=*/true, /*keepdim=*/true);
  Workload w;
  w.name = "resnet";
  w.description = "ResNet-20 (the resnet example's default) on Fashion-MNIST, batch 64, SGD 0.05 "
                  "Nesterov momentum 0.9 weight decay 5e-4; validation: 1000 test images";
  w.make_model = [] {
    torch::manual_seed(kSeed);
    return tl::Model(tl::examples::ResNet(1, 10, 3));
  };
  w.make_optimizer = [](const std::vector<torch::Tensor>& p) {
    return std::make_unique<torch::optim::SGD>(
        p, torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(5e-4));
  };
  w.loss = tl::losses::cross_entropy;
  w.batch_size = 64;
  w.steps = steps > 0 ? steps : 30;
  const auto standardized = [&](const tl::data::TensorDataset& d) {
    return tl::data::TensorDataset((d.inputs - mean) / std, d.targets);
  };
  w.train = training_rows(standardized(train), w.steps * w.batch_size);
  w.validation = first_of_order(standardized(test), 1000);
  w.validation_batch_size = 500;
  return w;
}

// char_gpt's default model (context 64, 4 layers, 4 heads, embedding 128) on
// its data: every fortune text file (regular files, not the .dat indexes),
// the last 5% of each held out; batch 16, AdamW 3e-3 betas (0.9, 0.95)
// weight decay 0.1 (on every parameter here; the example spares biases and
// LayerNorm gains), constant rate. Validation: 256 windows spread over the
// held-out text, as the example scores.
Workload char_gpt_workload(int64_t steps) {
  const std::string directory = "/usr/share/games/fortunes";
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.is_symlink() || !entry.is_regular_file() || entry.path().extension() == ".dat") continue;
    files.push_back(entry.path().string());
  }
  if (files.empty()) throw tl::Error(directory + ": no fortune files (apt-get install fortunes)");
  std::sort(files.begin(), files.end());
  std::string train_text, validation_text, all_text;
  for (const std::string& file : files) {
    const std::string text = tl::data::read_text({file});
    const auto cut = static_cast<size_t>(static_cast<double>(text.size()) * 0.95);
    train_text += text.substr(0, cut);
    validation_text += text.substr(cut);
    all_text += text;
  }
  const tl::data::Vocabulary vocabulary = tl::data::Vocabulary::of(all_text);
  constexpr int64_t kContext = 64;
  Workload w;
  w.name = "char_gpt";
  w.language_model = true;
  w.batch_size = 16;
  w.steps = steps > 0 ? steps : 100;
  // Windows of kContext + 1 tokens: inputs the first kContext, targets shifted by one.
  const auto windows = [&](const torch::Tensor& ids, const torch::Tensor& starts) {
    const torch::Tensor all = ids.unfold(0, kContext + 1, 1).index_select(0, starts);
    return tl::data::TensorDataset(all.narrow(1, 0, kContext).contiguous(),
                                   all.narrow(1, 1, kContext).contiguous());
  };
  const torch::Tensor train_ids = vocabulary.encode(train_text);
  const torch::Tensor validation_ids = vocabulary.encode(validation_text);
  const int64_t train_starts = train_ids.size(0) - kContext;
  w.train = windows(train_ids, tl::data::epoch_permutation(train_starts, kSeed, 0)
                                   .narrow(0, 0, std::min(train_starts, w.steps * w.batch_size)));
  w.steps = std::min(w.steps, w.train.size() / w.batch_size);
  w.validation = windows(validation_ids,
                         torch::linspace(0, static_cast<double>(validation_ids.size(0) - kContext - 1), 256)
                             .to(torch::kLong));
  w.validation_batch_size = 64;
  tl::examples::GptConfig config;
  config.vocabulary = vocabulary.size();
  config.context = kContext;
  w.make_model = [config] {
    torch::manual_seed(kSeed);
    return tl::Model(tl::examples::Gpt(config));
  };
  w.make_optimizer = [](const std::vector<torch::Tensor>& p) {
    return std::make_unique<torch::optim::AdamW>(
        p, torch::optim::AdamWOptions(3e-3).betas({0.9, 0.95}).weight_decay(0.1));
  };
  w.loss = token_cross_entropy;
  int64_t parameters = 0;
  for (const auto& p : w.make_model().parameters()) parameters += p.numel();
  w.description = fmt::format(
      "char_gpt's GPT (context 64, 4 layers, 4 heads, embedding 128, {} parameters, vocabulary "
      "{}) on {} fortune files ({} bytes), batch 16, AdamW 3e-3; validation: 256 held-out windows",
      parameters, vocabulary.size(), files.size(), all_text.size());
  return w;
}

// ------------------------------------------------------ implementations ---

enum class Impl { hand_fp32, fit_fp32, fit_bf16 };
constexpr std::array<Impl, 3> kImpls{Impl::hand_fp32, Impl::fit_fp32, Impl::fit_bf16};

const char* impl_name(Impl impl) {
  switch (impl) {
    case Impl::hand_fp32: return "hand-written loop, fp32";
    case Impl::fit_fp32: return "trainloop fit, fp32";
    case Impl::fit_bf16: return "trainloop fit, bf16 autocast";
  }
  return "?";
}

/// What one run measured; the model it trained, for validation.
struct Run {
  bench::Times times;
  int64_t steps = 0;
  double checksum = 0;  ///< sum of the final parameters, to see runs agree
  tl::Model model;
};

double checksum_of(const tl::Model& model) {
  torch::NoGradGuard no_grad;
  double sum = 0;
  for (const auto& p : model.parameters()) sum += p.to(torch::kDouble).sum().item<double>();
  return sum;
}

// The loop a careful user writes by hand: the batch a view of the ordered
// rows, zero_grad, forward, loss, backward, step, and the running loss kept
// as a tensor, read once at the end (as fit reads its loss once per epoch).
Run hand_written(const Workload& w, int64_t steps) {
  tl::Model model = w.make_model();
  auto optimizer = w.make_optimizer(model.parameters());
  model.train();
  const bench::Stopwatch stopwatch;
  auto loss_sum = torch::zeros({}, torch::kDouble);
  for (int64_t s = 0; s < steps; ++s) {
    const torch::Tensor inputs = w.train.inputs.narrow(0, s * w.batch_size, w.batch_size);
    const torch::Tensor targets = w.train.targets.narrow(0, s * w.batch_size, w.batch_size);
    optimizer->zero_grad();
    const torch::Tensor loss = w.loss(model.forward(inputs), targets);
    loss.backward();
    optimizer->step();
    loss_sum += loss.detach();
  }
  (void)loss_sum.item<double>();
  Run run{stopwatch.elapsed(), steps, 0, model};
  run.checksum = checksum_of(model);
  return run;
}

// fit for one epoch over exactly those batches, in order, with the loss
// metric fit always keeps and no callbacks; no validation inside.
Run with_trainloop(const Workload& w, int64_t steps, torch::Dtype dtype) {
  tl::Model model = w.make_model();
  auto optimizer = w.make_optimizer(model.parameters());
  const tl::data::TensorDataset rows(w.train.inputs.narrow(0, 0, steps * w.batch_size),
                                     w.train.targets.narrow(0, 0, steps * w.batch_size));
  tl::TrainingLoop loop(tl::data::Epochs(rows, w.batch_size).shuffle(false), nullptr, *optimizer, w.loss);
  loop.mixed_precision(dtype);
  const bench::Stopwatch stopwatch;
  loop.fit(model, 1, torch::kCPU);
  Run run{stopwatch.elapsed(), loop.state().global_step, 0, model};
  run.checksum = checksum_of(model);
  return run;
}

Run run_impl(Impl impl, const Workload& w, int64_t steps) {
  switch (impl) {
    case Impl::hand_fp32: return hand_written(w, steps);
    case Impl::fit_fp32: return with_trainloop(w, steps, torch::kFloat);
    case Impl::fit_bf16: return with_trainloop(w, steps, torch::kBFloat16);
  }
  throw tl::Error("unknown implementation");
}

/// Validation loss (mean per example, per token for the GPT) and accuracy
/// or perplexity, in float32, without autocast.
struct Validation {
  double loss = 0;
  double metric = 0;
};

Validation validate(const Workload& w, tl::Model model) {
  torch::NoGradGuard no_grad;
  model.train(false);
  double loss_sum = 0;
  int64_t correct = 0;
  const int64_t n = w.validation.size();
  for (int64_t first = 0; first < n; first += w.validation_batch_size) {
    const int64_t length = std::min(w.validation_batch_size, n - first);
    const torch::Tensor outputs = model.forward(w.validation.inputs.narrow(0, first, length));
    const torch::Tensor targets = w.validation.targets.narrow(0, first, length);
    loss_sum += w.loss(outputs, targets).item<double>() * static_cast<double>(length);
    if (!w.language_model) correct += outputs.argmax(1).eq(targets).sum().item<int64_t>();
  }
  Validation v;
  v.loss = loss_sum / static_cast<double>(n);
  v.metric = w.language_model ? std::exp(v.loss) : static_cast<double>(correct) / static_cast<double>(n);
  return v;
}

// ---------------------------------------------------------------- report ---

/// "model name" of /proc/cpuinfo and which of the listed flags it has.
std::string cpu_description() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, model = "unknown CPU", flags;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0 && model == "unknown CPU") model = line.substr(line.find(':') + 2);
    if (line.rfind("flags", 0) == 0 && flags.empty()) flags = " " + line.substr(line.find(':') + 2) + " ";
  }
  std::string native;
  for (const char* flag : {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}) {
    const bool has = flags.find(std::string(" ") + flag + " ") != std::string::npos;
    native += fmt::format("{}{} {}", native.empty() ? "" : ", ", flag, has ? "yes" : "no");
  }
  return fmt::format("{}; {} logical CPUs; {}", model, std::thread::hardware_concurrency(), native);
}

std::string relative(double value, double reference) {
  if (!(reference != 0)) return "n/a";
  return fmt::format("{:+.2f}%", 100 * (value - reference) / reference);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::stringstream stream(text);
  for (std::string item; std::getline(stream, item, ',');) {
    if (!item.empty()) items.push_back(item);
  }
  return items;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rounds = 5;
  int64_t steps = 0;
  std::string workloads = "mlp,lenet,resnet,char_gpt";
  CLI::App app("Per-step time of a hand-written fp32 LibTorch loop, trainloop fit in fp32 and fit "
               "with bf16 autocast, paired in one process; Markdown table on stdout.",
               "precision_speed");
  app.add_option("--rounds", rounds, "rounds; each runs every implementation once per workload")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))->capture_default_str();
  app.add_option("--steps", steps, "training steps per run (0: each workload's default)")
      ->check(CLI::Range(int64_t{0}, int64_t{100000}))->capture_default_str();
  app.add_option("--workloads", workloads, "comma-separated: mlp, lenet, resnet, char_gpt")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  std::vector<std::string> names = split_list(workloads);
  for (const auto& name : names) {
    if (name != "mlp" && name != "lenet" && name != "resnet" && name != "char_gpt") {
      std::fprintf(stderr, "precision_speed: --workloads: unknown workload \"%s\", expected mlp, lenet, resnet or char_gpt\n",
                   name.c_str());
      return 2;
    }
  }
  torch::set_num_threads(1);
  torch::set_num_interop_threads(1);
  // Debian's LibTorch multiplies float32 matrices with OpenBLAS, whose own
  // thread pool would otherwise run the fp32 loops' products on every core
  // (bfloat16's go through oneDNN, which follows set_num_threads).
  const int openblas_threads = bench::set_openblas_threads(1);
  if (!tl::autocast_supported(torch::kCPU, torch::kBFloat16)) {
    std::fprintf(stderr, "precision_speed: this LibTorch cannot autocast to bfloat16 on the CPU\n");
    return 1;
  }

  try {
    std::time_t now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M %Z", std::localtime(&now));
    std::printf("# precision_speed\n\n");
    std::printf("- date: %s\n- CPU: %s\n- LibTorch %s, %d thread (torch::set_num_threads(1)); %s\n",
                date, cpu_description().c_str(), TORCH_VERSION, torch::get_num_threads(),
                openblas_threads > 0
                    ? fmt::format("OpenBLAS (float32 matrix products) {} thread (openblas_set_num_threads)",
                                  openblas_threads).c_str()
                    : "no OpenBLAS loaded");
    std::printf("- %lld rounds; implementation order rotates each round; times: median over rounds "
                "of CPU time (CLOCK_PROCESS_CPUTIME_ID) and wall time per step; ratio: median of "
                "each round's paired CPU-time ratio hand-written fp32 / implementation (> 1: faster)\n",
                static_cast<long long>(rounds));
    std::fflush(stdout);

    std::vector<std::string> rows;
    for (const auto& name : names) {
      const bench::Stopwatch load_time;
      Workload w = name == "mlp"        ? mlp_workload(steps)
                   : name == "lenet"    ? lenet_workload(steps)
                   : name == "resnet"   ? resnet_workload(steps)
                                        : char_gpt_workload(steps);
      std::printf("- %s: %s; %lld steps per run (data ready in %.1f s)\n", w.name.c_str(),
                  w.description.c_str(), static_cast<long long>(w.steps), load_time.elapsed().wall);
      std::fflush(stdout);
      // Untimed: kernels, oneDNN primitives and the allocator set up.
      for (const Impl impl : kImpls) run_impl(impl, w, std::min<int64_t>(2, w.steps));

      std::map<Impl, std::vector<double>> cpu, wall, ratio;
      std::map<Impl, std::vector<double>> checksums;
      std::map<Impl, Validation> validation;
      for (int64_t round = 0; round < rounds; ++round) {
        std::map<Impl, Run> runs;
        for (size_t k = 0; k < kImpls.size(); ++k) {
          const Impl impl = kImpls[(k + static_cast<size_t>(round)) % kImpls.size()];
          Run run = run_impl(impl, w, w.steps);
          if (run.steps != w.steps) {
            throw tl::Error(fmt::format("{} ran {} steps, expected {}", impl_name(impl), run.steps, w.steps));
          }
          runs.emplace(impl, run);
        }
        for (const Impl impl : kImpls) {
          const Run& run = runs.at(impl);
          cpu[impl].push_back(run.times.cpu / static_cast<double>(run.steps));
          wall[impl].push_back(run.times.wall / static_cast<double>(run.steps));
          ratio[impl].push_back(runs.at(Impl::hand_fp32).times.cpu / run.times.cpu);
          checksums[impl].push_back(run.checksum);
          if (round == 0) validation[impl] = validate(w, run.model);
        }
        std::fprintf(stderr, "%s round %lld/%lld: CPU ms/step hand %.2f, fit fp32 %.2f, fit bf16 %.2f\n",
                     w.name.c_str(), static_cast<long long>(round + 1), static_cast<long long>(rounds),
                     1e3 * cpu[Impl::hand_fp32].back(), 1e3 * cpu[Impl::fit_fp32].back(),
                     1e3 * cpu[Impl::fit_bf16].back());
      }
      const Validation& fp32 = validation.at(Impl::fit_fp32);
      for (const Impl impl : kImpls) {
        const auto& sums = checksums.at(impl);
        const bool same = std::all_of(sums.begin(), sums.end(), [&](double s) { return s == sums[0]; });
        const Validation& v = validation.at(impl);
        const std::string metric = w.language_model ? fmt::format("perplexity {:.3f}", v.metric)
                                                    : fmt::format("accuracy {:.4f}", v.metric);
        const std::string versus =
            impl == Impl::fit_bf16
                ? fmt::format("{} / {}", relative(v.loss, fp32.loss), relative(v.metric, fp32.metric))
                : (impl == Impl::hand_fp32 ? (v.loss == fp32.loss ? "= fit fp32" : relative(v.loss, fp32.loss))
                                           : "reference");
        rows.push_back(fmt::format("| {} | {} | {:.2f} | {:.2f} | {:.2f}× | {:.4f} | {} | {} |{}",
                                   w.name, impl_name(impl), 1e3 * bench::median(cpu.at(impl)),
                                   1e3 * bench::median(wall.at(impl)), bench::median(ratio.at(impl)),
                                   v.loss, metric, versus, same ? "" : " (runs differ)"));
      }
    }
    std::printf("\n| workload | implementation | CPU ms/step | wall ms/step | speed vs hand fp32 (CPU) "
                "| val loss | val metric | bf16 vs fp32 (loss / metric) |\n");
    std::printf("|---|---|---:|---:|---:|---:|---|---|\n");
    for (const auto& row : rows) std::printf("%s\n", row.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "precision_speed: %s\n", e.what());
    return 1;
  }
}
