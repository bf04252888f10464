#include "trainloop/callbacks/tensorboard.h"

#include <fmt/format.h>

#include <ctime>
#include <exception>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "flush_timer.h"
#include "monitored_metric.h"
#include "trainloop/error.h"
#include "trainloop/tensorboard/event_writer.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace {

using tensorboard::EventWriter;

// Local time, with '-' instead of ':' so the name is valid on every file system.
std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H-%M-%S", &local);
  return text;
}

class TensorBoard : public Callback {
 public:
  explicit TensorBoard(TensorBoardOptions options)
      : options_(std::move(options)), flush_timer_(options_.flush_seconds()) {
    if (options_.log_dir().empty()) throw Error("tensorboard: log_dir is empty");
    detail::check_flush_seconds("tensorboard", options_.flush_seconds());
    if (options_.log_every_n_steps() < 1) {
      throw Error(fmt::format("tensorboard: log_every_n_steps is {}, expected >= 1",
                              options_.log_every_n_steps()));
    }
  }

  // From the run's directory, so two writers of one fit keep their states
  // apart.
  std::string state_key() const override {
    if (options_.run_name().empty()) return "tensorboard:" + options_.log_dir();
    return "tensorboard:" + (std::filesystem::path(options_.log_dir()) / options_.run_name()).string();
  }
  bool rank_zero_only() const override { return true; }
  // A run of a given name is one output; a new timestamped run claims its
  // own directory at fit_start (see start).
  std::vector<OutputPath> outputs() const override {
    if (options_.run_name().empty()) return {};
    return {{(std::filesystem::path(options_.log_dir()) / options_.run_name()).string(),
             OutputKind::directory}};
  }

  void on_event(Event event, TrainingLoop& loop) override {
    const LoopState& state = loop.state();
    switch (event) {
      case Event::fit_start:
        // A resumed fit continues the files that load() names; if it has no
        // state to load, the first record opens a new run.
        finish();
        in_fit_ = true;
        flush_timer_.restart();
        if (state.resumed_from.empty()) start(state);
        break;
      case Event::batch_end:
        if (train_ && flush_timer_.at_batch_end()) flush();
        if (in_fit_ && state.phase == Phase::training && due(state)) {
          if (!train_) start(state);
          log_training(state);
        }
        break;
      case Event::validation_end:
        // evaluate() also ends with validation_end, but outside a fit: no writer then.
        if (in_fit_ && state.phase == Phase::validation) {
          if (!train_) start(state);
          log_validation(state);
        }
        break;
      case Event::epoch_end:
        if (!train_) break;
        if (options_.histograms()) log_histograms(loop);
        if (flush_timer_.at_epoch_end()) flush();
        break;
      case Event::fit_end:
        in_fit_ = false;
        finish();
        break;
      default:
        break;
    }
  }

  // Where each file stands: a resume cuts them back there, dropping records
  // written after the checkpoint, which the resumed fit writes again.
  void save(torch::serialize::OutputArchive& archive) const override {
    archive.write("run_dir", c10::IValue(run_dir_));
    archive.write("last_logged_step", torch::tensor(last_logged_step_));
    for (const auto& [key, writer] : {std::pair{"train", train_.get()},
                                      std::pair{"validation", validation_.get()}}) {
      if (writer == nullptr) {
        if (run_dir_.empty()) continue;
        // Not opened yet (the validation run opens at the first
        // validation): the event files there now, which a resume keeps.
        c10::List<std::string> files;
        for (const auto& name : event_files(std::filesystem::path(run_dir_) / key)) files.push_back(name);
        archive.write(std::string(key) + "_files", c10::IValue(files));
        continue;
      }
      archive.write(std::string(key) + "_path", c10::IValue(writer->path()));
      archive.write(std::string(key) + "_length", torch::tensor(writer->flushed_length()));
    }
  }

  void load(torch::serialize::InputArchive& archive) override {
    finish();
    c10::IValue run_dir;
    if (!archive.try_read("run_dir", run_dir) || !run_dir.isString()) {
      throw Error("tensorboard: the saved state has no run_dir");
    }
    last_logged_step_ =
        detail::read_scalar("tensorboard", archive, "last_logged_step").item<int64_t>();
    if (run_dir.toStringRef().empty()) return;  // saved before anything was logged
    run_dir_ = run_dir.toStringRef();
    for (auto* writer : {&train_, &validation_}) {
      const std::string key = writer == &train_ ? "train" : "validation";
      c10::IValue path;
      if (!archive.try_read(key + "_path", path) || !path.isString()) {
        remove_files_written_after(archive, key);
        continue;
      }
      const auto length = detail::read_scalar("tensorboard", archive, (key + "_length").c_str());
      *writer = EventWriter::resume(path.toStringRef(), length.item<int64_t>());
    }
  }

 private:
  // The event files in `directory`, by name.
  static std::vector<std::string> event_files(const std::filesystem::path& directory) {
    std::vector<std::string> names;
    std::error_code error;
    for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
      const std::string name = entry.path().filename().string();
      if (name.find("tfevents") != std::string::npos) names.push_back(name);
    }
    return names;
  }

  // A run whose `key` writer was not open at the checkpoint: the event files
  // that came after it (a process killed after its first validation) hold
  // records the resumed fit writes again, so they go.
  void remove_files_written_after(torch::serialize::InputArchive& archive, const std::string& key) {
    c10::IValue kept;
    if (!archive.try_read(key + "_files", kept) || !kept.isList()) return;  // an older checkpoint
    std::set<std::string> before;
    for (const auto& name : kept.toListRef()) {
      if (name.isString()) before.insert(name.toStringRef());
    }
    const std::filesystem::path directory = std::filesystem::path(run_dir_) / key;
    for (const auto& name : event_files(directory)) {
      if (before.count(name) != 0) continue;
      std::error_code error;
      std::filesystem::remove(directory / name, error);
      if (error) {
        throw Error(fmt::format("tensorboard: cannot remove {}, written after the checkpoint: {}",
                                (directory / name).string(), error.message()));
      }
    }
  }

  void start(const LoopState& state) {
    finish();  // a previous fit that never reached fit_end
    std::string run = options_.run_name();
    if (run.empty()) {
      // Two fits started in the same second must not share a run: the one
      // whose mkdir makes the directory owns it (an exists() check first
      // would leave a window in which both take the same name).
      std::error_code error;
      std::filesystem::create_directories(options_.log_dir(), error);
      const std::string base = timestamp();
      run = base;
      for (int n = 2; !std::filesystem::create_directory(
               std::filesystem::path(options_.log_dir()) / run, error);
           ++n) {
        if (error) {
          throw Error(fmt::format("tensorboard: cannot create a run directory in {}: {}",
                                  options_.log_dir(), error.message()));
        }
        run = fmt::format("{}-{}", base, n);
      }
    }
    run_dir_ = (std::filesystem::path(options_.log_dir()) / run).string();
    train_ = std::make_unique<EventWriter>((std::filesystem::path(run_dir_) / "train").string());
    last_logged_step_ = -1;
    if (options_.config_text())
      train_->add_text("config", *options_.config_text(), state.global_step);
  }

  // Every n-th optimizer step, and the epoch's last batch so each epoch's
  // final value is on the chart. A batch that did not update the weights
  // (gradient accumulation, a cancelled batch) keeps the step just logged.
  bool due(const LoopState& state) const {
    if (state.global_step == last_logged_step_) return false;
    return (state.global_step > 0 && state.global_step % options_.log_every_n_steps() == 0) ||
           state.batch + 1 >= state.batch_count;
  }

  void log_training(const LoopState& state) {
    last_logged_step_ = state.global_step;
    for (const auto& metric : state.training_metrics) {
      train_->add_scalar(metric->name(), metric->compute(), state.global_step);
    }
    if (state.optimizer != nullptr && !state.optimizer->param_groups().empty()) {
      train_->add_scalar("learning_rate", state.learning_rate(), state.global_step);
    }
  }

  void log_validation(const LoopState& state) {
    // Opened at the first validation, so a fit without validation data leaves
    // no empty run behind.
    if (!validation_) {
      validation_ =
          std::make_unique<EventWriter>((std::filesystem::path(run_dir_) / "validation").string());
    }
    for (const auto& metric : state.validation_metrics) {
      validation_->add_scalar(metric->name(), metric->compute(), state.global_step);
    }
  }

  void log_histograms(TrainingLoop& loop) {
    const int64_t step = loop.state().global_step;
    for (const auto& [name, parameter] : loop.model().named_parameters()) {
      train_->add_histogram("parameters/" + name, parameter, step);
      if (parameter.grad().defined()) {
        train_->add_histogram("gradients/" + name, parameter.grad(), step);
      }
    }
  }

  void flush() {
    train_->flush();
    if (validation_) validation_->flush();
  }

  // Closes both files even if the first fails, then reports the first error.
  void finish() {
    std::exception_ptr first;
    for (auto* writer : {&train_, &validation_}) {
      if (!*writer) continue;
      try {
        (*writer)->close();
      } catch (...) {
        if (!first) first = std::current_exception();
      }
      writer->reset();
    }
    if (first) std::rethrow_exception(first);
  }

  TensorBoardOptions options_;
  detail::FlushTimer flush_timer_;
  bool in_fit_ = false;
  std::string run_dir_;
  std::unique_ptr<EventWriter> train_;
  std::unique_ptr<EventWriter> validation_;
  int64_t last_logged_step_ = -1;
};

}  // namespace

std::shared_ptr<Callback> tensorboard(TensorBoardOptions options) {
  return std::make_shared<TensorBoard>(std::move(options));
}

}  // namespace trainloop::callbacks
