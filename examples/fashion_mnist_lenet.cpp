// Trains LeNet-5 on Fashion-MNIST with SGD and momentum: the trainloop demo.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "lenet.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

namespace {

struct Flags {
  int64_t epochs = 10;
  int64_t batch_size = 64;
  double lr = 0.05;
  double momentum = 0.9;
  uint64_t seed = 42;
  std::string device = "cpu";
  int threads = 0;
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string out = "run";
  std::string schedule = "one-cycle";
  bool lr_find = false;
  bool resume = false;
  int64_t checkpoint_steps = 0;
  double dist_timeout = 300;
  std::string precision = "fp32";
  int64_t train_examples = 0;
};

// Exit code 2 with one line for anything wrong on the command line.
using tl::examples::kUsageError;
// Finite positive numbers; a learning rate at most the largest float.
using tl::examples::kPositive;
// Beyond it, the timeout in milliseconds would overflow int64 (a year is
// far more than any rendezvous needs).
constexpr double kMaxTimeoutSeconds = 365.0 * 24 * 3600;

int usage_error(const std::string& message) {
  std::fprintf(stderr, "fashion_mnist_lenet: %s (see --help)\n", message.c_str());
  return kUsageError;
}

// The run's settings, written to TensorBoard as a text summary.
std::string configuration(const Flags& flags) {
  return fmt::format("LeNet-5 on Fashion-MNIST: epochs {}, batch size {}, SGD lr {} momentum {}, "
                     "schedule {}, seed {}, device {}, precision {}",
                     flags.epochs, flags.batch_size, flags.lr, flags.momentum, flags.schedule,
                     flags.seed, flags.device, flags.precision);
}

// The schedule named by --schedule, with --lr as its peak; none for constant.
std::optional<tl::Schedule> make_schedule(const Flags& flags, int64_t training_examples) {
  if (flags.schedule == "one-cycle") return tl::schedules::one_cycle(flags.lr);
  if (flags.schedule == "warmup-linear") {
    // One epoch of warm-up, then linear decay to 0.
    return tl::schedules::warmup_linear(flags.lr, (training_examples + flags.batch_size - 1) / flags.batch_size);
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app("Trains LeNet-5 on Fashion-MNIST with trainloop.", "fashion_mnist_lenet");
  app.add_option("--epochs", flags.epochs, "epochs to train")->check(CLI::Range(int64_t{1}, int64_t{1000}))->capture_default_str();
  app.add_option("--batch-size", flags.batch_size, "examples per training batch (per process when data-parallel)")->check(CLI::Range(int64_t{1}, int64_t{60000}))->capture_default_str();
  app.add_option("--lr", flags.lr, "SGD learning rate")->check(kPositive)->capture_default_str();
  app.add_option("--momentum", flags.momentum, "SGD momentum")->check(tl::examples::finite_range(0.0, 1.0))->capture_default_str();
  app.add_option("--seed", flags.seed, "seed of the initial weights and the batch order")->check(tl::examples::kSeed)->capture_default_str();
  app.add_option("--device", flags.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads", flags.threads, "CPU threads (0: LibTorch's default)")->check(CLI::Range(0, 1024))->capture_default_str();
  app.add_option("--data-dir", flags.data_dir, "directory of the Fashion-MNIST IDX files")->check(CLI::ExistingDirectory)->capture_default_str();
  app.add_option("--out", flags.out,
                 "directory for the model, log.csv, curves.svg and tensorboard/")->check(tl::examples::kOutputDirectory)->capture_default_str();
  app.add_option("--schedule", flags.schedule, "learning-rate schedule; --lr is its peak")
      ->check(CLI::IsMember({"constant", "one-cycle", "warmup-linear"}))->capture_default_str();
  app.add_flag("--resume", flags.resume,
               "continue from the newest checkpoint under --out/checkpoints (a fresh run if none)");
  app.add_option("--checkpoint-steps", flags.checkpoint_steps,
                 "also checkpoint every N optimizer steps (0: at epoch ends and every 2 minutes)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))->capture_default_str();
  app.add_option("--dist-timeout", flags.dist_timeout,
                 "data-parallel: seconds to wait for the other processes before giving up")
      ->check(tl::examples::finite_positive(kMaxTimeoutSeconds))->capture_default_str();
  tl::examples::add_precision_flag(app, flags.precision);
  app.add_option("--train-examples", flags.train_examples,
                 "training images used, a fixed random subset (0: all 60000), e.g. for a quick check")
      ->check(CLI::Range(int64_t{0}, int64_t{60000}))->capture_default_str();
  app.add_flag("--lr-find", flags.lr_find,
               "sweep the learning rate, write lr_find.svg under --out, suggest a rate, and exit");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    if (const auto newline = message.find('\n'); newline != std::string::npos) message.resize(newline);
    return usage_error(message);
  }

  torch::Device device(torch::kCPU);
  try {
    device = torch::Device(flags.device);
  } catch (const std::exception&) {
    return usage_error(fmt::format("--device: \"{}\" is not a device; expected cpu, cuda or cuda:N", flags.device));
  }
  if (device.is_cuda() && !torch::cuda::is_available()) {
    return usage_error(fmt::format("--device: {} requested, but this LibTorch sees no CUDA device", flags.device));
  }
  if (flags.threads > 0) torch::set_num_threads(flags.threads);

  try {
    // Data-parallel when torchrun (or the same variables set by hand) started
    // this process: Gloo between CPU processes, NCCL between GPUs.
    auto group = tl::distributed::init(
        tl::distributed::Options()
            .timeout(std::chrono::milliseconds(static_cast<int64_t>(std::ceil(1000 * flags.dist_timeout))))
            .backend(device.is_cuda() ? tl::distributed::Backend::automatic
                                      : tl::distributed::Backend::gloo));
    if (group && group->backend_name() == "nccl") device = group->device();  // cuda:LOCAL_RANK
    if (group && flags.lr_find) {
      std::fprintf(stderr, "fashion_mnist_lenet: --lr-find runs in one process, not under torchrun\n");
      return kUsageError;
    }
    const bool rank_zero = !group || group->rank() == 0;
    auto [train, test] = tl::data::fashion_mnist(flags.data_dir);
    if (flags.train_examples > 0 && flags.train_examples < train.size()) {
      // The first of a fixed random order, so that a subset holds every class.
      train = tl::data::subset(train, tl::data::epoch_permutation(train.size(), flags.seed, 0)
                                          .narrow(0, 0, flags.train_examples));
    }
    torch::manual_seed(flags.seed);
    tl::examples::LeNet model;
    torch::optim::SGD optimizer(model->parameters(),
                                torch::optim::SGDOptions(flags.lr).momentum(flags.momentum));
    const fs::path out(flags.out);
    // Everything below writes under --out: a second run there fails now,
    // before it removes or rewrites anything of this one's.
    std::optional<tl::OutputLock> out_lock;
    if (rank_zero) out_lock.emplace(flags.out, tl::OutputKind::directory);
    const fs::path checkpoints = out / "checkpoints";
    const bool resuming = flags.resume && !tl::checkpoint_names(checkpoints.string()).empty();
    // A fresh run starts a fresh log, and leaves no older checkpoint for a
    // later --resume to pick up by mistake.
    if (!resuming && !flags.lr_find && rank_zero) fs::remove_all(checkpoints);
    fs::create_directories(out);
    auto checkpoint = tl::callbacks::checkpoint(
        checkpoints.string(), tl::callbacks::CheckpointOptions()
                                  .every_n_minutes(2)
                                  .every_n_steps(flags.checkpoint_steps)
                                  .keep_last(2)
                                  .monitor("val_accuracy")
                                  .mode(tl::callbacks::Mode::max));
    std::vector<std::shared_ptr<tl::Callback>> callbacks{
        tl::callbacks::progress(),
        tl::callbacks::csv_logger(tl::callbacks::CsvLoggerOptions((out / "log.csv").string())
                                      .append(resuming)),
        checkpoint,
        tl::callbacks::tensorboard(tl::callbacks::TensorBoardOptions()
                                       .log_dir((out / "tensorboard" / "stats").string())
                                       .config_text(configuration(flags))),
        tl::callbacks::plot(tl::callbacks::PlotOptions((out / "curves.svg").string())
                                .title("LeNet-5 on Fashion-MNIST"))};
    if (auto schedule = make_schedule(flags, train.size())) {
      callbacks.push_back(tl::callbacks::lr_scheduler(*schedule));
    }
    tl::TrainingLoop loop(tl::data::Epochs(train, flags.batch_size).shuffle(true).seed(flags.seed),
                          tl::data::Batches(test, 1000), optimizer, tl::losses::cross_entropy,
                          {tl::metrics::accuracy(), tl::metrics::top_k_accuracy(5)}, callbacks);
    loop.data_parallel(group);
    loop.mixed_precision(tl::parse_precision(flags.precision));
    if (flags.lr_find) {
      const auto found = tl::lr_find(loop, model, tl::LrFinderOptions().device(device).svg_path(
                                                      (out / "lr_find.svg").string()));
      std::printf("lr_find: %zu steps%s; suggested rates: steepest %.3g, minimum/10 %.3g; plot in %s\n",
                  found.rates.size(), found.diverged ? " (stopped when the loss diverged)" : "",
                  found.suggested_steepest, found.suggested_min_div10,
                  (out / "lr_find.svg").c_str());
      return 0;
    }
    if (rank_zero) {
      std::printf("Fashion-MNIST: %lld training and %lld test images; LeNet-5 on %s, %s, LibTorch threads: %d%s\n",
                  static_cast<long long>(train.size()), static_cast<long long>(test.size()),
                  device.str().c_str(), flags.precision.c_str(), torch::get_num_threads(),
                  group ? fmt::format("; data-parallel over {} processes ({})", group->world_size(),
                                      group->backend_name()).c_str()
                        : "");
      std::fflush(stdout);
    }
    const auto start = std::chrono::steady_clock::now();
    const tl::FitStatus status = resuming ? loop.fit(model, flags.epochs, device, checkpoints.string())
                                          : loop.fit(model, flags.epochs, device);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // The other ranks' results are rank 0's; it alone reports and saves.
    if (!rank_zero) return status == tl::FitStatus::interrupted ? 128 + loop.state().interrupt_signal : 0;
    if (!loop.state().resumed_from.empty()) {
      std::printf("resumed from %s\n", loop.state().resumed_from.c_str());
    }
    if (checkpoint->write_count() > 0) {
      std::printf("checkpoints: %lld written, the last in %.0f ms, to %s\n",
                  static_cast<long long>(checkpoint->write_count()),
                  1000 * checkpoint->last_write_seconds(), checkpoint->last_path().c_str());
    }
    if (status == tl::FitStatus::interrupted) {
      const int signal = loop.state().interrupt_signal;
      std::printf("interrupted by %s at step %lld; logs flushed; continue with --resume\n",
                  signal == SIGINT ? "SIGINT" : "SIGTERM",
                  static_cast<long long>(loop.state().global_step));
      return 128 + signal;
    }
    // From the history: a resumed fit with no epoch left to run has no
    // validation pass of its own.
    const auto& history = loop.state().history;
    const double accuracy = history.empty() ? NAN : history.back().at("val_accuracy");
    const fs::path model_path = out / "lenet.pt";
    tl::save_weights(model, model_path.string());
    std::printf("test accuracy %.4f after %lld epochs in %.1f s (%s); model saved to %s\n", accuracy,
                static_cast<long long>(flags.epochs), seconds, flags.precision.c_str(),
                model_path.c_str());
    std::printf("logs: %s, %s, %s (tensorboard --logdir %s)\n", (out / "log.csv").c_str(),
                (out / "curves.svg").c_str(), (out / "tensorboard" / "stats").c_str(),
                (out / "tensorboard" / "stats").c_str());
    return 0;
  } catch (const std::exception& e) {
    // One line, without a LibTorch error's C++ stack.
    return tl::examples::run_error("fashion_mnist_lenet", e);
  }
}
