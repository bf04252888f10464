// A small training run for the kill and signal tests: they start it, kill or
// signal it, start it again with --resume, and compare its results with
// those of a run that was never stopped.
//
//   checkpoint_worker --out DIR [--resume] [--epochs N] [--slow-ms MS]
//                     [--precision fp32|bf16|fp16] [--loss-scaling] [--ema]
//
// --ema: an exponential moving average of the weights (with warm-up) that
// validation uses and final.pt holds.
// --loss-scaling: a loss scaler whose scale starts at 2^100 (bf16) or 2^16
// (fp16) and doubles every 3 clean updates, and a loss 10^4 times larger on
// every 7th training batch, so scaled gradients overflow, updates are
// skipped and the scale backs off again and again during the run.
//
// Writes DIR/log.csv, DIR/tensorboard/run/…, DIR/checkpoints/… and, when the
// fit completes, DIR/final.pt (the weights). Exit 0 when complete, 128 + the
// signal number when SIGINT or SIGTERM stopped it, 1 on an error.
#include <trainloop/trainloop.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "toy_task.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::string out;
  bool resume = false;
  int64_t epochs = 4;
  int64_t slow_ms = 0;
  std::string precision = "fp32";
  bool loss_scaling = false;
  bool ema = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (arg == "--resume") {
      resume = true;
    } else if (arg == "--epochs" && i + 1 < argc) {
      epochs = std::atoll(argv[++i]);
    } else if (arg == "--slow-ms" && i + 1 < argc) {
      slow_ms = std::atoll(argv[++i]);
    } else if (arg == "--precision" && i + 1 < argc) {
      precision = argv[++i];
    } else if (arg == "--loss-scaling") {
      loss_scaling = true;
    } else if (arg == "--ema") {
      ema = true;
    } else {
      std::fprintf(stderr, "checkpoint_worker: unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (out.empty()) {
    std::fprintf(stderr, "checkpoint_worker: --out is required\n");
    return 2;
  }
  // Bitwise equality needs the same reduction order in every run.
  torch::set_num_threads(1);
  try {
    const fs::path dir(out);
    const fs::path checkpoints = dir / "checkpoints";
    // Nothing to resume from yet (killed before the first checkpoint): start
    // clean, so no partial log of that attempt remains.
    const bool resuming = resume && !tl::checkpoint_names(checkpoints.string()).empty();
    if (!resuming) fs::remove_all(dir);
    fs::create_directories(dir);

    const tl::data::TensorDataset train = tl::testing_support::three_class_data(480, 8, 1);
    const tl::data::TensorDataset validation = tl::testing_support::three_class_data(96, 8, 2);
    torch::manual_seed(3);
    tl::testing_support::ToyNet model(0.2);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    std::vector<std::shared_ptr<tl::Callback>> callbacks{
        tl::callbacks::csv_logger((dir / "log.csv").string()),
        tl::callbacks::tensorboard(tl::callbacks::TensorBoardOptions()
                                       .log_dir((dir / "tensorboard").string())
                                       .run_name("run")
                                       .log_every_n_steps(1)),
        tl::callbacks::lr_scheduler(tl::schedules::warmup_linear(0.05, 20)),
        tl::callbacks::early_stopping(tl::callbacks::EarlyStoppingOptions("val_loss").patience(100)),
        tl::callbacks::checkpoint(checkpoints.string(), tl::callbacks::CheckpointOptions()
                                                            .every_n_steps(1)
                                                            .keep_last(2)
                                                            .monitor("val_loss"))};
    if (ema) {
      callbacks.push_back(tl::callbacks::ema(
          tl::callbacks::EmaOptions().decay(0.95).warmup(true).apply_at_end(true)));
    }
    if (slow_ms > 0) {
      callbacks.push_back(tl::callbacks::lambda(
          [slow_ms](tl::Event event, tl::TrainingLoop&) {
            if (event == tl::Event::batch_end) {
              std::this_thread::sleep_for(std::chrono::milliseconds(slow_ms));
            }
          },
          "slow"));
    }
    tl::TrainingLoop loop(tl::data::Epochs(train, 16).seed(7), tl::data::Batches(validation, 32),
                          optimizer, tl::losses::cross_entropy, {tl::metrics::accuracy()},
                          callbacks);
    int64_t skipped = 0;
    loop.add_callback(tl::callbacks::lambda(
        [&skipped](tl::Event event, tl::TrainingLoop& l) {
          if (event == tl::Event::update_start && l.state().update_skipped) ++skipped;
        },
        "count_skipped"));
    tl::MixedPrecisionOptions mixed(tl::parse_precision(precision));
    if (loss_scaling) {
      mixed.loss_scaling(tl::LossScalerOptions()
                             .init_scale(std::ldexp(1.0, mixed.dtype() == torch::kHalf ? 16 : 100))
                             .growth_interval(3));
    }
    loop.mixed_precision(mixed);
    if (loss_scaling) {
      loop.step([](tl::LoopState& state, const tl::Model& net, const tl::LossFunction& loss) {
        state.outputs = net.forward(state.inputs);
        state.loss = loss(state.outputs, state.targets);
        if (state.phase == tl::Phase::training && state.batch % 7 == 3) state.loss = state.loss * 1e4;
      });
    }
    const tl::FitStatus status =
        resuming ? loop.fit(model, epochs, torch::kCPU, checkpoints.string())
                 : loop.fit(model, epochs, torch::kCPU);
    if (status == tl::FitStatus::interrupted) {
      std::printf("interrupted by signal %d at step %lld\n", loop.state().interrupt_signal,
                  static_cast<long long>(loop.state().global_step));
      return 128 + loop.state().interrupt_signal;
    }
    tl::save_weights(model, (dir / "final.pt").string());
    std::printf("completed at step %lld", static_cast<long long>(loop.state().global_step));
    if (const tl::LossScaler* scaler = loop.loss_scaler()) {
      std::printf(", loss scale %g, %lld updates skipped in this process", scaler->scale_value(),
                  static_cast<long long>(skipped));
    }
    std::printf("\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "checkpoint_worker: %s\n", e.what());
    return 1;
  }
}
