// One rank of a small data-parallel training run, for the distributed
// end-to-end tests: they start it with torchrun's environment (RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), or
// without it as one process, kill it, and compare what the runs leave.
//
//   distributed_worker --out DIR [--epochs N] [--batch B] [--accumulate A]
//                      [--checkpoint-steps S] [--resume] [--slow-ms MS]
//                      [--exit-at-step K] [--timeout-ms T] [--bucket-bytes N]
//                      [--no-overlap]
//
// Rank r writes DIR/final.rank{r}.pt (its weights) when the fit completes;
// the logging callbacks write DIR/log.rank{r}.csv and DIR/tensorboard.rank{r},
// so a test sees which ranks wrote them; checkpoints go to DIR/checkpoints.
// Every rank starts from weights of its own (seed 3 + rank): the broadcast
// from rank 0 must make them equal. Exit 0 when complete, 128 + the signal
// when SIGINT or SIGTERM stopped the fit, 3 for --exit-at-step, 1 on an error.
#include <trainloop/trainloop.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "toy_task.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

namespace {

struct Flags {
  std::string out;
  int64_t epochs = 4;
  int64_t batch = 16;
  int64_t accumulate = 1;
  int64_t checkpoint_steps = 0;
  bool resume = false;
  int64_t slow_ms = 0;
  int64_t exit_at_step = 0;
  int64_t timeout_ms = 5000;
  int64_t bucket_bytes = 1 << 20;
  bool overlap = true;
};

bool parse(int argc, char** argv, Flags& flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--out" && has_value) {
      flags.out = argv[++i];
    } else if (arg == "--epochs" && has_value) {
      flags.epochs = std::atoll(argv[++i]);
    } else if (arg == "--batch" && has_value) {
      flags.batch = std::atoll(argv[++i]);
    } else if (arg == "--accumulate" && has_value) {
      flags.accumulate = std::atoll(argv[++i]);
    } else if (arg == "--checkpoint-steps" && has_value) {
      flags.checkpoint_steps = std::atoll(argv[++i]);
    } else if (arg == "--slow-ms" && has_value) {
      flags.slow_ms = std::atoll(argv[++i]);
    } else if (arg == "--exit-at-step" && has_value) {
      flags.exit_at_step = std::atoll(argv[++i]);
    } else if (arg == "--timeout-ms" && has_value) {
      flags.timeout_ms = std::atoll(argv[++i]);
    } else if (arg == "--bucket-bytes" && has_value) {
      flags.bucket_bytes = std::atoll(argv[++i]);
    } else if (arg == "--no-overlap") {
      flags.overlap = false;
    } else if (arg == "--resume") {
      flags.resume = true;
    } else {
      std::fprintf(stderr, "distributed_worker: unknown argument %s\n", arg.c_str());
      return false;
    }
  }
  if (flags.out.empty()) std::fprintf(stderr, "distributed_worker: --out is required\n");
  return !flags.out.empty();
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!parse(argc, argv, flags)) return 2;
  torch::set_num_threads(1);
  // For messages before the group exists (as torchrun gave it).
  int64_t rank = std::getenv("RANK") != nullptr ? std::atoll(std::getenv("RANK")) : 0;
  try {
    auto group = tl::distributed::init(
        tl::distributed::Options().timeout(std::chrono::milliseconds(flags.timeout_ms)));
    rank = group ? group->rank() : 0;
    const fs::path dir(flags.out);
    const fs::path checkpoints = dir / "checkpoints";
    fs::create_directories(dir);
    const bool resuming = flags.resume && !tl::checkpoint_names(checkpoints.string()).empty();

    const tl::data::TensorDataset train = tl::testing_support::three_class_data(480, 8, 1);
    const tl::data::TensorDataset validation = tl::testing_support::three_class_data(97, 8, 2);
    torch::manual_seed(3 + static_cast<uint64_t>(rank));
    tl::testing_support::ToyNet model;
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    const std::string suffix = ".rank" + std::to_string(rank);
    std::vector<std::shared_ptr<tl::Callback>> callbacks{
        tl::callbacks::csv_logger((dir / ("log" + suffix + ".csv")).string()),
        tl::callbacks::tensorboard(tl::callbacks::TensorBoardOptions()
                                       .log_dir((dir / ("tensorboard" + suffix)).string())
                                       .run_name("run")),
        tl::callbacks::lr_scheduler(tl::schedules::warmup_linear(0.05, 20))};
    if (flags.checkpoint_steps > 0) {
      callbacks.push_back(tl::callbacks::checkpoint(
          checkpoints.string(),
          tl::callbacks::CheckpointOptions().every_n_steps(flags.checkpoint_steps).keep_last(2)));
    }
    if (flags.slow_ms > 0 || flags.exit_at_step > 0) {
      callbacks.push_back(tl::callbacks::lambda(
          [&flags, rank](tl::Event event, tl::TrainingLoop& loop) {
            if (event != tl::Event::batch_end || loop.state().phase != tl::Phase::training) return;
            if (flags.exit_at_step > 0 && loop.state().global_step >= flags.exit_at_step) {
              std::fprintf(stderr, "distributed_worker rank %lld: leaving at step %lld\n",
                           static_cast<long long>(rank),
                           static_cast<long long>(loop.state().global_step));
              std::_Exit(3);  // as a crash would: no goodbye to the others
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(flags.slow_ms));
          },
          "pace"));
    }
    tl::TrainingLoop loop(tl::data::Epochs(train, flags.batch).seed(7),
                          tl::data::Batches(validation, 16), optimizer, tl::losses::cross_entropy,
                          {tl::metrics::accuracy()}, callbacks);
    loop.accumulate_gradients(flags.accumulate);
    loop.data_parallel(group, tl::distributed::DataParallelOptions()
                                  .bucket_bytes(flags.bucket_bytes)
                                  .overlap(flags.overlap));
    const tl::FitStatus status = resuming
                                     ? loop.fit(model, flags.epochs, torch::kCPU, checkpoints.string())
                                     : loop.fit(model, flags.epochs, torch::kCPU);
    if (status == tl::FitStatus::interrupted) {
      std::printf("rank %lld interrupted by signal %d at step %lld\n", static_cast<long long>(rank),
                  loop.state().interrupt_signal, static_cast<long long>(loop.state().global_step));
      return 128 + loop.state().interrupt_signal;
    }
    tl::save_weights(model, (dir / ("final" + suffix + ".pt")).string());
    std::printf("rank %lld completed at step %lld\n", static_cast<long long>(rank),
                static_cast<long long>(loop.state().global_step));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distributed_worker rank %lld: %s\n", static_cast<long long>(rank),
                 e.what());
    return 1;
  }
}
