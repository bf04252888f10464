// Classifies the rows of a CSV table with a small MLP: the PyTorch tutorial's
// hand-written loop (80/20 split, CrossEntropyLoss, Adam lr 0.01, 100
// full-batch epochs, a loss plot), written with trainloop.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tabular.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

namespace {

struct Flags {
  tl::examples::TableFlags table{tl::examples::kSklearnData + "wine_data.csv"};
  double test_fraction = 0.2;
  uint64_t seed = 42;
  int64_t epochs = 100;
  double lr = 0.01;
  std::vector<int64_t> hidden{32, 16};
  std::string out = "run/tabular";
  int threads = 0;
  std::string precision = "fp32";
};

// Which row (0-based, among the table's rows) went to which part, for
// anyone who wants to train something else on the same split.
void write_split(const fs::path& path, const tl::data::CsvTable& table,
                 const tl::data::SplitIndices& parts) {
  std::vector<const char*> part(static_cast<size_t>(table.dataset.size()), "train");
  const torch::Tensor test = parts.test.contiguous();
  for (int64_t i = 0; i < test.numel(); ++i) part[static_cast<size_t>(test.data_ptr<int64_t>()[i])] = "test";
  const fs::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary);
    out << "row,line,part\n";
    for (size_t row = 0; row < part.size(); ++row) {
      out << row << ',' << table.lines[row] << ',' << part[row] << '\n';
    }
    if (!out.flush()) throw tl::Error(fmt::format("{}: cannot write", temporary.string()));
  }
  fs::rename(temporary, path);
}

// The model and the standardizer in one file: what predicting needs.
void save_model(const torch::nn::Sequential& model, const tl::data::Standardizer& standardizer,
                const fs::path& path) {
  torch::serialize::OutputArchive archive;
  model->save(archive);
  standardizer.save(archive);
  const fs::path temporary = path.string() + ".tmp";
  archive.save_to(temporary.string());
  fs::rename(temporary, path);
}

// Prints the first few misclassified test rows by line and class name.
void print_mistakes(const tl::data::CsvTable& table, const tl::data::SplitIndices& parts,
                    const torch::Tensor& logits, const torch::Tensor& targets) {
  const torch::Tensor predicted = logits.argmax(1);
  const torch::Tensor wrong = (predicted != targets).nonzero().flatten();
  constexpr int64_t kShown = 5;
  for (int64_t k = 0; k < std::min(kShown, wrong.numel()); ++k) {
    const int64_t i = wrong[k].item<int64_t>();
    const int64_t row = parts.test[i].item<int64_t>();
    std::printf("  line %lld: predicted %s, labeled %s\n",
                static_cast<long long>(table.lines[static_cast<size_t>(row)]),
                table.class_names[static_cast<size_t>(predicted[i].item<int64_t>())].c_str(),
                table.class_names[static_cast<size_t>(targets[i].item<int64_t>())].c_str());
  }
  if (wrong.numel() > kShown) std::printf("  ... and %lld more\n", static_cast<long long>(wrong.numel() - kShown));
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app("Trains an MLP classifier on a CSV table with trainloop: stratified train/test "
               "split, standardized features, cross-entropy, Adam, full-batch epochs.",
               "tabular_mlp");
  tl::examples::add_table_flags(app, flags.table);
  app.add_option("--test-fraction", flags.test_fraction, "fraction of the rows held out for testing")
      ->check(tl::examples::finite_range(0.01, 0.99))->capture_default_str();
  app.add_option("--seed", flags.seed, "seed of the split and the initial weights")->check(tl::examples::kSeed)->capture_default_str();
  app.add_option("--epochs", flags.epochs, "full-batch epochs (one Adam update each)")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))->capture_default_str();
  app.add_option("--lr", flags.lr, "Adam learning rate")->check(tl::examples::finite_range(1e-8, 10.0))->capture_default_str();
  app.add_option("--hidden", flags.hidden, "hidden layer widths, e.g. --hidden 32 16")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}))->capture_default_str();
  app.add_option("--out", flags.out, "directory for loss.svg, split.csv and model.pt")->check(tl::examples::kOutputDirectory)->capture_default_str();
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
    const auto classes = static_cast<int64_t>(table.class_names.size());
    // Stratified, so that the 20% keeps the classes' proportions.
    const tl::data::SplitIndices parts =
        tl::data::train_test_split_indices(table.dataset, flags.test_fraction, flags.seed, true);
    tl::data::TensorDataset train = tl::data::subset(table.dataset, parts.train);
    tl::data::TensorDataset test = tl::data::subset(table.dataset, parts.test);
    // Statistics from the training rows only, applied to both parts.
    const tl::data::Standardizer standardizer(train.inputs);
    train = standardizer.transform(train);
    test = standardizer.transform(test);
    std::printf("%s: %lld rows, %lld features, %lld classes; %lld training and %lld test rows "
                "(stratified, seed %llu)\n",
                flags.table.csv.c_str(), static_cast<long long>(table.dataset.size()),
                static_cast<long long>(table.feature_names.size()), static_cast<long long>(classes),
                static_cast<long long>(train.size()), static_cast<long long>(test.size()),
                static_cast<unsigned long long>(flags.seed));

    torch::manual_seed(flags.seed);
    torch::nn::Sequential model =
        tl::examples::mlp(static_cast<int64_t>(table.feature_names.size()), flags.hidden, classes);
    torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(flags.lr));
    const fs::path out(flags.out);
    fs::create_directories(out);
    // Ten report lines whatever the epoch count.
    const int64_t report_every = std::max<int64_t>(1, flags.epochs / 10);
    auto report = tl::callbacks::lambda([&](tl::Event event, tl::TrainingLoop& loop) {
      const tl::LoopState& state = loop.state();
      if (event != tl::Event::epoch_end || (state.epoch + 1) % report_every != 0) return;
      std::printf("epoch %3lld/%lld  loss %.4f  test loss %.4f  test accuracy %.4f\n",
                  static_cast<long long>(state.epoch + 1), static_cast<long long>(state.epoch_count),
                  state.metric("loss"), state.metric("val_loss"), state.metric("val_accuracy"));
      std::fflush(stdout);
    }, "report");
    const std::string title = fs::path(flags.table.csv).filename().string();
    tl::TrainingLoop loop(
        tl::data::Epochs(train, train.size()).shuffle(false),  // full batch, as the tutorial
        tl::data::Batches(test, test.size()), optimizer, tl::losses::cross_entropy,
        {tl::metrics::accuracy()},
        {report, tl::callbacks::plot(tl::callbacks::PlotOptions((out / "loss.svg").string())
                                         .title("MLP on " + title))});
    loop.mixed_precision(tl::parse_precision(flags.precision));  // predict() too
    const auto start = std::chrono::steady_clock::now();
    loop.fit(model, flags.epochs, torch::kCPU);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    // Read before predict(), which starts a new pass.
    const double accuracy = loop.state().metric("val_accuracy");
    const torch::Tensor logits = loop.predict(model, tl::data::Batches(test, test.size()));
    const int64_t correct = (logits.argmax(1) == test.targets).sum().item<int64_t>();
    write_split(out / "split.csv", table, parts);
    save_model(model, standardizer, out / "model.pt");
    std::printf("test accuracy %.4f (%lld of %lld) after %lld epochs in %.2f s (%s)\n", accuracy,
                static_cast<long long>(correct), static_cast<long long>(test.size()),
                static_cast<long long>(flags.epochs), seconds, flags.precision.c_str());
    print_mistakes(table, parts, logits, test.targets);
    std::printf("files: %s, %s, %s\n", (out / "loss.svg").c_str(), (out / "split.csv").c_str(),
                (out / "model.pt").c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tabular_mlp: %s\n", tl::examples::first_line(e).c_str());
    return 1;
  }
}
