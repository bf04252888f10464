// Binary classification of a CSV table, scored by the Matthews correlation
// coefficient, trained with mini-batches under BERT's CoLA schedule: linear
// warm-up to a peak learning rate, then linear decay to 0 (AdamW).
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "tabular.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

namespace {

struct Flags {
  tl::examples::TableFlags table{tl::examples::kSklearnData + "breast_cancer.csv"};
  double test_fraction = 0.2;
  uint64_t seed = 42;
  int64_t epochs = 30;
  int64_t batch_size = 32;
  double peak_lr = 0.01;
  double warmup = 0.1;
  double weight_decay = 0.01;
  std::vector<int64_t> hidden{32};
  std::string out = "run/binary";
  int threads = 0;
  std::string precision = "fp32";
};

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app("Trains a binary MLP classifier on a CSV table with trainloop, reporting the "
               "Matthews correlation; AdamW under a linear warm-up/decay schedule, mini-batches.",
               "binary_mcc");
  tl::examples::add_table_flags(app, flags.table);
  app.add_option("--test-fraction", flags.test_fraction, "fraction of the rows held out for testing")
      ->check(tl::examples::finite_range(0.01, 0.99))->capture_default_str();
  app.add_option("--seed", flags.seed, "seed of the split, the initial weights and the batch order")->check(tl::examples::kSeed)->capture_default_str();
  app.add_option("--epochs", flags.epochs, "epochs to train")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))->capture_default_str();
  app.add_option("--batch-size", flags.batch_size, "rows per training batch")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}))->capture_default_str();
  app.add_option("--lr", flags.peak_lr, "peak learning rate, reached at the end of the warm-up")
      ->check(tl::examples::finite_range(1e-8, 10.0))->capture_default_str();
  app.add_option("--warmup", flags.warmup, "fraction of the updates spent warming up (BERT: 0.1)")
      ->check(tl::examples::finite_range(0.0, 0.99))->capture_default_str();
  app.add_option("--weight-decay", flags.weight_decay, "AdamW weight decay")
      ->check(tl::examples::finite_range(0.0, 1.0))->capture_default_str();
  app.add_option("--hidden", flags.hidden, "hidden layer widths, e.g. --hidden 64 32")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))->capture_default_str();
  app.add_option("--out", flags.out, "directory for curves.svg")->check(tl::examples::kOutputDirectory)->capture_default_str();
  app.add_option("--threads", flags.threads, "CPU threads (0: LibTorch's default)")
      ->check(CLI::Range(0, 1024))->capture_default_str();
  tl::examples::add_precision_flag(app, flags.precision);
  if (const int code = tl::examples::parse_command_line(app, argc, argv); code >= 0) return code;
  if (const std::string problem = tl::examples::table_flags_problem(flags.table); !problem.empty()) {
    return tl::examples::usage_error(app, problem);
  }
  if (flags.threads > 0) torch::set_num_threads(flags.threads);

  try {
    const tl::data::CsvTable table = tl::examples::read_table(flags.table);
    if (table.class_names.size() != 2) {
      throw tl::Error(fmt::format("{}: column \"{}\" holds {} classes, expected 2 for binary "
                                  "classification",
                                  flags.table.csv, table.label_name, table.class_names.size()));
    }
    auto [train, test] = tl::data::train_test_split(table.dataset, flags.test_fraction, flags.seed,
                                                    /*stratify=*/true);
    const tl::data::Standardizer standardizer(train.inputs);
    train = standardizer.transform(train);
    test = standardizer.transform(test);
    std::printf("%s: %lld training and %lld test rows, %lld features; positive class \"%s\"\n",
                flags.table.csv.c_str(), static_cast<long long>(train.size()),
                static_cast<long long>(test.size()),
                static_cast<long long>(table.feature_names.size()), table.class_names[1].c_str());

    torch::manual_seed(flags.seed);
    // One logit: positive when > 0, as accuracy and matthews_correlation read it.
    torch::nn::Sequential model =
        tl::examples::mlp(static_cast<int64_t>(table.feature_names.size()), flags.hidden, 1);
    torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(flags.peak_lr)
                                                           .weight_decay(flags.weight_decay));
    const int64_t updates = flags.epochs * ((train.size() + flags.batch_size - 1) / flags.batch_size);
    const auto warmup_steps = static_cast<int64_t>(std::llround(flags.warmup * static_cast<double>(updates)));
    const fs::path out(flags.out);
    fs::create_directories(out);
    const int64_t report_every = std::max<int64_t>(1, flags.epochs / 6);
    auto report = tl::callbacks::lambda([&](tl::Event event, tl::TrainingLoop& loop) {
      const tl::LoopState& state = loop.state();
      if (event != tl::Event::epoch_end || (state.epoch + 1) % report_every != 0) return;
      std::printf("epoch %3lld/%lld  lr %.5f  loss %.4f  test loss %.4f  test MCC %.4f\n",
                  static_cast<long long>(state.epoch + 1), static_cast<long long>(state.epoch_count),
                  state.learning_rate(), state.metric("loss"), state.metric("val_loss"),
                  state.metric("val_matthews_correlation"));
      std::fflush(stdout);
    }, "report");
    const std::string title = fs::path(flags.table.csv).filename().string();
    tl::TrainingLoop loop(
        tl::data::Epochs(train, flags.batch_size).shuffle(true).seed(flags.seed),
        tl::data::Batches(test, 256), optimizer, tl::losses::binary_cross_entropy_with_logits,
        {tl::metrics::matthews_correlation(), tl::metrics::accuracy()},
        {tl::callbacks::lr_scheduler(tl::schedules::warmup_linear(flags.peak_lr, warmup_steps)),
         report,
         tl::callbacks::plot(tl::callbacks::PlotOptions((out / "curves.svg").string())
                                 .title("Binary MLP on " + title))});
    loop.mixed_precision(tl::parse_precision(flags.precision));  // evaluate() too
    const auto start = std::chrono::steady_clock::now();
    loop.fit(model, flags.epochs, torch::kCPU);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto metrics = loop.evaluate(model, tl::data::Batches(test, 256));
    std::printf("test MCC %.4f, accuracy %.4f after %lld epochs (%lld updates, %lld warm-up, peak lr "
                "%g) in %.2f s (%s)\n",
                metrics.at("matthews_correlation"), metrics.at("accuracy"),
                static_cast<long long>(flags.epochs), static_cast<long long>(updates),
                static_cast<long long>(warmup_steps), flags.peak_lr, seconds, flags.precision.c_str());
    std::printf("files: %s\n", (out / "curves.svg").c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "binary_mcc: %s\n", tl::examples::first_line(e).c_str());
    return 1;
  }
}
