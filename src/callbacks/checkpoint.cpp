#include "trainloop/callbacks/checkpoint.h"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <iostream>
#include <set>
#include <utility>

#include "../io/files.h"
#include "monitored_metric.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop::callbacks {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCheckpointKey = "checkpoint";

bool improved(Mode mode, double value, double best) {
  return mode == Mode::min ? value < best : value > best;
}

// Whether `name` is a ".tmp-…-<pid>" or ".old-…-<pid>" directory (see
// save_checkpoint) of this process or of a process that no longer exists.
bool abandoned_temporary(const std::string& name) {
  if (name.rfind(".tmp-", 0) != 0 && name.rfind(".old-", 0) != 0) return false;
  const size_t dash = name.rfind('-');
  const std::string digits = name.substr(dash + 1);
  if (digits.empty() || digits.size() > 9 ||
      digits.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  const pid_t pid = static_cast<pid_t>(std::stol(digits));
  return pid == ::getpid() || (::kill(pid, 0) != 0 && errno == ESRCH);
}

}  // namespace

CheckpointCallback::CheckpointCallback(CheckpointOptions options)
    : directory_(options.directory()), options_(std::move(options)) {
  if (directory_.empty()) throw Error("checkpoint: the directory is empty");
  if (options_.every_n_epochs() < 0 || options_.every_n_steps() < 0 ||
      !(options_.every_n_minutes() >= 0) || options_.keep_last() < 0) {
    throw Error(fmt::format(
        "checkpoint: every_n_epochs {}, every_n_steps {}, every_n_minutes {}, keep_last {}: "
        "expected numbers >= 0",
        options_.every_n_epochs(), options_.every_n_steps(), options_.every_n_minutes(),
        options_.keep_last()));
  }
  best_value_ = detail::worst_value(options_.mode());
}

void CheckpointCallback::on_event(Event event, TrainingLoop& loop) {
  const LoopState& state = loop.state();
  switch (event) {
    case Event::fit_start:
      start(loop);
      return;
    case Event::batch_end: {
      // Only right after an update: inside a gradient-accumulation group the
      // gathered gradients are not part of a checkpoint.
      if (state.phase != Phase::training || state.global_step == last_step_seen_) return;
      last_step_seen_ = state.global_step;
      const bool interrupted = state.interrupt_signal != 0 && options_.on_interrupt();
      const bool steps_due =
          options_.every_n_steps() > 0 && state.global_step % options_.every_n_steps() == 0;
      const std::chrono::duration<double, std::ratio<60>> waited =
          std::chrono::steady_clock::now() - last_time_;
      bool time_due = options_.every_n_minutes() > 0 && waited.count() >= options_.every_n_minutes();
      if (options_.every_n_minutes() > 0 && state.world_size > 1) {
        // Clocks differ between ranks, and all must save at the same step
        // (saving is collective): rank 0's clock decides.
        torch::Tensor due = torch::tensor({time_due ? int64_t{1} : int64_t{0}});
        loop.process_group()->broadcast(due, 0);
        time_due = due.item<int64_t>() != 0;
      }
      if (interrupted || steps_due || time_due) write(loop, {state.epoch, state.batch + 1}, false);
      return;
    }
    case Event::epoch_end: {
      // A fit-level stop cut this epoch short; an interrupt saved already.
      if (state.stopping) return;
      const int64_t epochs_done = state.epoch + 1;
      bool best = false;
      if (!options_.monitor().empty()) {
        const double value = detail::monitored_value(kCheckpointKey, state, options_.monitor());
        best = improved(options_.mode(), value, best_value_);
        if (best) best_value_ = value;
      }
      const bool due = options_.every_n_epochs() > 0 && epochs_done % options_.every_n_epochs() == 0;
      const bool interrupted = state.interrupt_signal != 0 && options_.on_interrupt();
      if (due || best || interrupted) write(loop, {epochs_done, 0}, best);
      return;
    }
    default:
      return;
  }
}

void CheckpointCallback::start(TrainingLoop& loop) {
  const LoopState& state = loop.state();
  // In a data-parallel fit rank 0 alone writes into the directory.
  if (state.rank == 0) prepare_directory();
  if (!options_.monitor().empty()) detail::check_monitor(kCheckpointKey, loop, options_.monitor());
  const bool inside_epochs = options_.every_n_steps() > 0 || options_.every_n_minutes() > 0 ||
                             options_.on_interrupt();
  loop.check_checkpointable(inside_epochs);
  // A resumed fit gets these back from load(), which runs after fit_start.
  best_value_ = detail::worst_value(options_.mode());
  best_path_.clear();
  verified_.clear();
  reported_invalid_ = 0;
  last_step_seen_ = state.global_step;
  last_time_ = std::chrono::steady_clock::now();
}

void CheckpointCallback::prepare_directory() {
  std::error_code error;
  fs::create_directories(directory_, error);
  if (error) {
    throw Error(fmt::format("{}: cannot create the checkpoint directory: {}", directory_,
                            error.message()));
  }
  // Fail now, not after the first hour of training.
  const std::string probe = (fs::path(directory_) / ".write-test").string();
  try {
    io::write_atomically(probe, "checkpoint directory write test\n");
  } catch (const Error& e) {
    throw Error(fmt::format("{}: cannot write checkpoints here: {}", directory_, e.what()));
  }
  fs::remove(probe, error);
  // What a run killed while writing left behind: only directories of this
  // process or of one that no longer runs, never one being written.
  for (const auto& entry : fs::directory_iterator(directory_, error)) {
    const std::string name = entry.path().filename().string();
    if (abandoned_temporary(name)) fs::remove_all(entry.path(), error);
  }
}

void CheckpointCallback::write(TrainingLoop& loop, ResumePoint resume, bool best) {
  const auto started = std::chrono::steady_clock::now();
  const std::string path = (fs::path(directory_) / checkpoint_name(resume)).string();
  // Before saving, so the saved state of this callback names this checkpoint.
  if (best) best_path_ = path;
  CheckpointNote note;
  if (!options_.monitor().empty()) {
    note.monitor = options_.monitor();
    note.monitor_value = loop.state().metric(options_.monitor());
  }
  loop.save_checkpoint(path, resume, note);
  last_time_ = std::chrono::steady_clock::now();
  last_write_seconds_ = std::chrono::duration<double>(last_time_ - started).count();
  last_path_ = path;
  verified_[fs::path(path).filename().string()] = "";
  ++write_count_;
  if (loop.state().rank == 0) prune();
}

void CheckpointCallback::prune() {
  if (options_.keep_last() == 0) return;
  // Only checkpoints that verify count toward keep_last: a corrupt or empty
  // directory named newer than the fit must not push out the checkpoint just
  // written. Each is verified once; those of this fit are valid as written.
  std::vector<std::string> valid;
  int64_t invalid = 0;
  std::string first_problem;
  for (const std::string& name : checkpoint_names(directory_)) {
    auto known = verified_.find(name);
    if (known == verified_.end()) {
      std::string problem;
      try {
        verify_checkpoint((fs::path(directory_) / name).string());
      } catch (const Error& e) {
        problem = e.what();
      }
      known = verified_.emplace(name, problem).first;
    }
    if (known->second.empty()) {
      valid.push_back(name);
    } else {
      if (first_problem.empty()) first_problem = known->second;
      ++invalid;
    }
  }
  if (invalid > reported_invalid_) {
    std::cerr << fmt::format(
        "trainloop: {}: {} director{} named like checkpoints {} not valid; left alone and not "
        "counted among the {} kept (the first: {})\n",
        directory_, invalid, invalid == 1 ? "y" : "ies", invalid == 1 ? "is" : "are",
        options_.keep_last(), first_problem);
    reported_invalid_ = invalid;
  }
  const std::string best = best_path_.empty() ? "" : fs::path(best_path_).filename().string();
  const std::string newest = fs::path(last_path_).filename().string();
  const auto keep_from = static_cast<int64_t>(valid.size()) - options_.keep_last();
  for (int64_t i = 0; i < keep_from; ++i) {
    // A checkpoint of another fit named later than this one's newest must not
    // make it go.
    if (valid[i] == best || valid[i] == newest) continue;
    std::error_code error;
    fs::remove_all(fs::path(directory_) / valid[i], error);
    verified_.erase(valid[i]);
  }
}

void CheckpointCallback::save(torch::serialize::OutputArchive& archive) const {
  archive.write("best_value", torch::tensor(best_value_, torch::kDouble));
  archive.write("best_path", c10::IValue(best_path_));
}

void CheckpointCallback::load(torch::serialize::InputArchive& archive) {
  best_value_ = detail::read_scalar(kCheckpointKey, archive, "best_value").item<double>();
  c10::IValue path;
  if (!archive.try_read("best_path", path) || !path.isString()) {
    throw Error("checkpoint: the saved state has no best_path");
  }
  best_path_ = path.toStringRef();
}

std::shared_ptr<CheckpointCallback> checkpoint(CheckpointOptions options) {
  return std::make_shared<CheckpointCallback>(std::move(options));
}

std::shared_ptr<CheckpointCallback> checkpoint(std::string directory, CheckpointOptions options) {
  return checkpoint(std::move(options.directory(std::move(directory))));
}

}  // namespace trainloop::callbacks
