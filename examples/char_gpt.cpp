// Trains a small character-level GPT on the English text of Debian's
// fortunes package, then prints a sample of what it learned.
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"
#include "gpt.h"

namespace tl = trainloop;
namespace fs = std::filesystem;

namespace {

constexpr const char* kProgram = "char_gpt";

struct Flags {
  std::string data_dir = "/usr/share/games/fortunes";
  int64_t context = 64;
  int64_t layers = 4;
  int64_t heads = 4;
  int64_t embedding = 128;
  double dropout = 0.0;
  int64_t epochs = 15;
  int64_t batches_per_epoch = 100;
  int64_t batch_size = 16;
  int64_t validation_windows = 256;
  double validation_fraction = 0.05;
  double lr = 3e-3;
  int64_t warmup_steps = 100;
  double weight_decay = 0.1;
  uint64_t seed = 42;
  std::string device = "cpu";
  int threads = 0;
  std::string out = "run/char_gpt";
  std::string prompt = "The ";
  int64_t sample_length = 400;
  double temperature = 0.8;
  int64_t top_k = 20;
  std::string precision = "fp32";
};

// The fortune files of `directory`: regular files only, so the .u8 links to
// them, and subdirectories such as off/ (offensive fortunes), are skipped,
// as are the .dat index files. Sorted, so the text is the same on every run.
std::vector<std::string> fortune_files(const std::string& directory) {
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    throw tl::Error(fmt::format("{}: not a directory, expected the fortunes text files (apt-get "
                                "install fortunes)",
                                directory));
  }
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (entry.is_symlink() || !entry.is_regular_file()) continue;
    if (entry.path().extension() == ".dat") continue;
    files.push_back(entry.path().string());
  }
  if (files.empty()) {
    throw tl::Error(fmt::format("{}: no fortune text files found, expected files such as "
                                "'literature' beside their .dat indexes",
                                directory));
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Each epoch draws `batches` batches of distinct windows from all of them,
// in the order epoch_permutation(seed, epoch) gives: short epochs, each
// seeing new text, and the same windows on a rerun.
class SampledWindows : public tl::data::BatchSource {
 public:
  SampledWindows(tl::data::TensorDataset windows, int64_t batches, int64_t batch_size, uint64_t seed)
      : windows_(std::move(windows)), batch_size_(batch_size), seed_(seed) {
    batches_ = std::min(batches, windows_.size() / batch_size_);
    if (batches_ < 1) {
      throw tl::Error(fmt::format("{} training windows, fewer than one batch of {}",
                                  windows_.size(), batch_size_));
    }
  }
  void start_epoch(int64_t epoch) override {
    order_ = tl::data::epoch_permutation(windows_.size(), seed_, epoch)
                 .narrow(0, 0, batches_ * batch_size_);
  }
  int64_t batch_count() const override { return batches_; }
  tl::data::Batch batch(int64_t index) const override {
    const torch::Tensor rows = order_.narrow(0, index * batch_size_, batch_size_);
    return {windows_.inputs.index_select(0, rows), windows_.targets.index_select(0, rows)};
  }

 private:
  tl::data::TensorDataset windows_;
  int64_t batches_ = 0;
  int64_t batch_size_;
  uint64_t seed_;
  torch::Tensor order_;
};

// Cross-entropy of logits [B, T, V] against ids [B, T], averaged per token.
torch::Tensor token_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  return tl::losses::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

// AdamW with weight decay on the matrices only (not on biases and LayerNorm
// gains), as GPT-2's training did.
std::vector<torch::optim::OptimizerParamGroup> parameter_groups(tl::examples::Gpt& model,
                                                                const Flags& flags) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& parameter : model->parameters()) {
    (parameter.dim() >= 2 ? decay : no_decay).push_back(parameter);
  }
  auto options = [&](double weight_decay) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(flags.lr).betas({0.9, 0.95}).weight_decay(weight_decay));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, options(flags.weight_decay));
  groups.emplace_back(no_decay, options(0.0));
  return groups;
}

// Continues `prompt` by `length` tokens, each drawn from the softmax of the
// logits / temperature over the top_k most likely tokens.
std::string sample(tl::examples::Gpt& model, const tl::data::Vocabulary& vocabulary,
                   const Flags& flags, torch::Device device) {
  torch::NoGradGuard no_grad;
  model->eval();
  torch::manual_seed(flags.seed);
  torch::Tensor ids = vocabulary.encode(flags.prompt, "--prompt").unsqueeze(0).to(device);
  const int64_t k = std::min(flags.top_k, vocabulary.size());
  for (int64_t i = 0; i < flags.sample_length; ++i) {
    const int64_t start = std::max<int64_t>(0, ids.size(1) - flags.context);
    const torch::Tensor context = ids.narrow(1, start, ids.size(1) - start);
    torch::Tensor logits = model->forward(context).select(1, context.size(1) - 1) / flags.temperature;
    const torch::Tensor kth = std::get<0>(logits.topk(k, -1)).narrow(1, k - 1, 1);
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
    ids = torch::cat({ids, torch::multinomial(torch::softmax(logits, -1), 1)}, 1);
  }
  return vocabulary.decode(ids[0]);
}

std::string configuration(const Flags& flags, int64_t vocabulary, int64_t parameters) {
  return fmt::format("char GPT on fortunes: context {}, {} layers, {} heads, embedding {}, "
                     "vocabulary {}, {} parameters; {} epochs of {} batches of {}; AdamW peak lr {} "
                     "weight decay {}, warm-up {} steps then cosine to lr/10; seed {}; precision {}",
                     flags.context, flags.layers, flags.heads, flags.embedding, vocabulary,
                     parameters, flags.epochs, flags.batches_per_epoch, flags.batch_size, flags.lr,
                     flags.weight_decay, flags.warmup_steps, flags.seed, flags.precision);
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app("Trains a small character-level GPT on Debian's fortunes with trainloop, then "
               "prints a sample.",
               kProgram);
  using tl::examples::kPositive;
  app.add_option("--data-dir", flags.data_dir, "directory of the fortune text files")->capture_default_str();
  app.add_option("--context", flags.context, "tokens (bytes) per training window")->check(CLI::Range(int64_t{2}, int64_t{4096}))->capture_default_str();
  app.add_option("--layers", flags.layers, "transformer blocks")->check(CLI::Range(int64_t{1}, int64_t{64}))->capture_default_str();
  app.add_option("--heads", flags.heads, "attention heads per block")->check(CLI::Range(int64_t{1}, int64_t{64}))->capture_default_str();
  app.add_option("--embedding", flags.embedding, "width of the residual stream (a multiple of --heads)")->check(CLI::Range(int64_t{1}, int64_t{4096}))->capture_default_str();
  app.add_option("--dropout", flags.dropout, "dropout probability")->check(tl::examples::finite_range(0.0, 0.9))->capture_default_str();
  app.add_option("--epochs", flags.epochs, "epochs to train")->check(CLI::Range(int64_t{1}, int64_t{100000}))->capture_default_str();
  app.add_option("--batches-per-epoch", flags.batches_per_epoch, "training batches per epoch, each of new windows")->check(CLI::Range(int64_t{1}, int64_t{1000000}))->capture_default_str();
  app.add_option("--batch-size", flags.batch_size, "windows per batch")->check(CLI::Range(int64_t{1}, int64_t{4096}))->capture_default_str();
  app.add_option("--validation-windows", flags.validation_windows, "held-out windows scored after each epoch (0: all)")->check(CLI::Range(int64_t{0}, int64_t{1000000}))->capture_default_str();
  app.add_option("--validation-fraction", flags.validation_fraction, "the end of each file held out for validation")->check(tl::examples::finite_range(0.01, 0.5))->capture_default_str();
  app.add_option("--lr", flags.lr, "peak learning rate of AdamW")->check(kPositive)->capture_default_str();
  app.add_option("--warmup-steps", flags.warmup_steps, "steps of linear warm-up before the cosine decay (at most half the steps)")->check(CLI::Range(int64_t{0}, int64_t{1000000}))->capture_default_str();
  app.add_option("--weight-decay", flags.weight_decay, "AdamW weight decay of the weight matrices")->check(tl::examples::finite_range(0.0, 1.0))->capture_default_str();
  app.add_option("--seed", flags.seed, "seed of the weights, the windows and the sample")->check(tl::examples::kSeed)->capture_default_str();
  app.add_option("--device", flags.device, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--threads", flags.threads, "CPU threads (0: LibTorch's default)")->check(CLI::Range(0, 1024))->capture_default_str();
  app.add_option("--out", flags.out, "directory for the model and tensorboard/")->check(tl::examples::kOutputDirectory)->capture_default_str();
  app.add_option("--prompt", flags.prompt, "start of the sample")->capture_default_str();
  app.add_option("--sample-length", flags.sample_length, "tokens to generate after training")->check(CLI::Range(int64_t{0}, int64_t{100000}))->capture_default_str();
  app.add_option("--temperature", flags.temperature, "sampling temperature")->check(kPositive)->capture_default_str();
  app.add_option("--top-k", flags.top_k, "sample among the k most likely tokens")->check(CLI::Range(int64_t{1}, int64_t{256}))->capture_default_str();
  tl::examples::add_precision_flag(app, flags.precision);
  if (const auto code = tl::examples::parse(app, argc, argv, kProgram)) return *code;
  if (flags.embedding % flags.heads != 0) {
    return tl::examples::usage_error(kProgram, fmt::format("--embedding: {} is not a multiple of --heads {}", flags.embedding, flags.heads));
  }
  if (flags.prompt.empty()) return tl::examples::usage_error(kProgram, "--prompt: empty, expected at least one character");
  torch::Device device(torch::kCPU);
  if (const auto code = tl::examples::parse_device(flags.device, kProgram, device)) return *code;
  if (flags.threads > 0) torch::set_num_threads(flags.threads);

  try {
    // The end of every file is held out, so validation covers every topic.
    std::string train_text, validation_text, all_text;
    const std::vector<std::string> files = fortune_files(flags.data_dir);
    for (const std::string& file : files) {
      const std::string text = tl::data::read_text({file});
      const auto cut = static_cast<size_t>(static_cast<double>(text.size()) * (1 - flags.validation_fraction));
      train_text += text.substr(0, cut);
      validation_text += text.substr(cut);
      all_text += text;
    }
    const tl::data::Vocabulary vocabulary = tl::data::Vocabulary::of(all_text);
    const tl::data::TensorDataset train_windows = tl::data::text_windows(
        train_text, tl::data::TextOptions(flags.context).stride(1), flags.data_dir + " (training part)", vocabulary);
    tl::data::TensorDataset validation = tl::data::text_windows(
        validation_text, tl::data::TextOptions(flags.context), flags.data_dir + " (validation part)", vocabulary);
    if (flags.validation_windows > 0 && validation.size() > flags.validation_windows) {
      // Spread over the whole held-out text, not just its first files.
      const torch::Tensor rows = torch::linspace(0, static_cast<double>(validation.size() - 1), flags.validation_windows).to(torch::kLong);
      validation = tl::data::TensorDataset(validation.inputs.index_select(0, rows), validation.targets.index_select(0, rows));
    }

    torch::manual_seed(flags.seed);
    tl::examples::GptConfig config;
    config.vocabulary = vocabulary.size();
    config.context = flags.context;
    config.layers = flags.layers;
    config.heads = flags.heads;
    config.embedding = flags.embedding;
    config.dropout = flags.dropout;
    tl::examples::Gpt model(config);
    int64_t parameters = 0;
    for (const auto& p : model->parameters()) parameters += p.numel();
    torch::optim::AdamW optimizer(parameter_groups(model, flags),
                                  torch::optim::AdamWOptions(flags.lr));

    // A short run (as in the tests) keeps a warm-up of at most half its steps.
    const SampledWindows training(train_windows, flags.batches_per_epoch, flags.batch_size, flags.seed);
    flags.warmup_steps = std::min(flags.warmup_steps, flags.epochs * training.batch_count() / 2);
    const fs::path out(flags.out);
    fs::create_directories(out);
    tl::TrainingLoop loop(
        training, tl::data::Batches(validation, 64), optimizer, token_cross_entropy,
        {tl::metrics::perplexity()},
        {tl::callbacks::progress(),
         tl::callbacks::tensorboard(tl::callbacks::TensorBoardOptions()
                                        .log_dir((out / "tensorboard" / "stats").string())
                                        .config_text(configuration(flags, vocabulary.size(), parameters))),
         tl::callbacks::lr_scheduler(tl::schedules::warmup_cosine(flags.lr, flags.warmup_steps, flags.lr / 10))});
    // Training and the validation perplexities (evaluate) run in this
    // precision; the sample after training runs in float32 (sample() calls
    // the model outside the loop): the weights are float32 either way, and
    // float32 logits keep the top-k cut and the softmax exact.
    loop.mixed_precision(tl::parse_precision(flags.precision));

    std::printf("fortunes: %zu files, %zu bytes (%zu for training, %zu held out), vocabulary of %lld bytes\n",
                files.size(), all_text.size(), train_text.size(), validation_text.size(),
                static_cast<long long>(vocabulary.size()));
    std::printf("GPT: %lld layers, %lld heads, embedding %lld, context %lld, %lld parameters; on %s, %s, LibTorch threads: %d\n",
                static_cast<long long>(flags.layers), static_cast<long long>(flags.heads),
                static_cast<long long>(flags.embedding), static_cast<long long>(flags.context),
                static_cast<long long>(parameters), device.str().c_str(), flags.precision.c_str(),
                torch::get_num_threads());
    const double before = loop.evaluate(model, tl::data::Batches(validation, 64), device).at("perplexity");
    std::printf("validation perplexity before training %.2f\n", before);
    std::fflush(stdout);

    const auto start = std::chrono::steady_clock::now();
    loop.fit(model, flags.epochs, device);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double after = loop.state().metric("val_perplexity");
    const fs::path model_path = out / "char_gpt.pt";
    torch::save(model, (out / "char_gpt.pt.tmp").string());
    fs::rename(out / "char_gpt.pt.tmp", model_path);
    std::printf("validation perplexity %.2f -> %.2f after %lld epochs (%lld steps) in %.1f s; model saved to %s\n",
                before, after, static_cast<long long>(flags.epochs),
                static_cast<long long>(loop.state().global_step), seconds, model_path.c_str());
    if (flags.sample_length > 0) {
      std::printf("sample (seed %llu, temperature %.2f, top-k %lld):\n%s\n",
                  static_cast<unsigned long long>(flags.seed), flags.temperature,
                  static_cast<long long>(flags.top_k), sample(model, vocabulary, flags, device).c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    return tl::examples::run_error(kProgram, e);
  }
}
