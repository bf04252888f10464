// A TrainingLoop's own state in a checkpoint: what it writes into one and
// reads back from one. The files themselves are checkpoint.cpp's.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <sstream>
#include <string_view>

#include "checkpoint_directory.h"
#include "distributed/coordinator.h"
#include "io/zip_check.h"
#include "step_precision.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"
#include "weights_bytes.h"

namespace trainloop {

namespace fs = std::filesystem;
using detail::kModelFile;
using detail::kOptimizerFile;
using detail::kStateFile;

namespace {

// size_t before LibTorch 2.x, c10::DeviceIndex (signed) after.
int64_t cuda_device_count() { return static_cast<int64_t>(torch::cuda::device_count()); }

std::string archive_bytes(torch::serialize::OutputArchive& archive) {
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

// `key` as an archive key: "cb_" and the key with everything but letters,
// digits and '_' replaced by '_'. The prefix, because archives are
// TorchScript modules whose attribute names must not be Python keywords
// ("raise") or start with a digit.
std::string archive_key(const std::string& key) {
  std::string out = "cb_";
  for (const char c : key) {
    out.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  }
  return out;
}

using ArchivePointer = std::unique_ptr<torch::serialize::OutputArchive>;

// What `callback.save` writes.
ArchivePointer saved(const Callback& callback) {
  auto archive = std::make_unique<torch::serialize::OutputArchive>();
  try {
    callback.save(*archive);
  } catch (const std::exception& e) {
    throw Error(fmt::format("checkpoint: callback {} failed to save its state: {}",
                            callback.state_key(), e.what()));
  }
  return archive;
}

// The same; null when it writes nothing.
ArchivePointer saved_state(const Callback& callback) {
  ArchivePointer archive = saved(callback);
  const std::string bytes = archive_bytes(*archive);
  torch::serialize::InputArchive written;
  written.load_from(bytes.data(), bytes.size(), torch::kCPU);
  if (written.keys().empty()) return nullptr;
  return archive;
}

// The state of each callback run on `rank`, by archive key: every one's
// with `save_all` (for a checkpoint), else only those of shared keys (a
// check). A key may be shared by callbacks whose save writes nothing (two
// lambdas, two progress bars), so only where one is shared is each save
// tried for state; a callback with a key of its own is not asked to save
// for a check. `Error` when two with state share a key.
std::map<std::string, ArchivePointer> callback_states(
    const std::vector<std::shared_ptr<Callback>>& callbacks, int64_t rank, bool save_all) {
  std::map<std::string, std::vector<const Callback*>> by_key;
  for (const auto& callback : callbacks) {
    if (rank != 0 && callback->rank_zero_only()) continue;
    by_key[archive_key(callback->state_key())].push_back(callback.get());
  }
  std::map<std::string, ArchivePointer> states;
  for (const auto& [key, sharing] : by_key) {
    if (sharing.size() == 1) {
      if (save_all) states.emplace(key, saved(*sharing.front()));
      continue;
    }
    const Callback* owner = nullptr;
    for (const Callback* callback : sharing) {
      ArchivePointer state = saved_state(*callback);
      if (!state) continue;
      if (owner != nullptr && owner->state_key() == callback->state_key()) {
        throw Error(fmt::format("checkpoint: two callbacks with state share the state key \"{}\"; "
                                "give one of them another state_key()",
                                callback->state_key()));
      }
      if (owner != nullptr) {
        throw Error(fmt::format("checkpoint: the state keys \"{}\" and \"{}\" are the same once "
                                "reduced to letters, digits and '_'; rename one",
                                owner->state_key(), callback->state_key()));
      }
      owner = callback;
      states.emplace(key, std::move(state));
    }
  }
  return states;
}

// Rank r's generators and running metrics (see write_rank_state): rank 0's
// are at the top of state.pt, the others' in bytes under "rank{r}".
torch::serialize::InputArchive& rank_state(torch::serialize::InputArchive& top,
                                           torch::serialize::InputArchive& storage, int64_t rank,
                                           const torch::Device& device,
                                           const std::string& state_path) {
  if (rank == 0) return top;
  torch::Tensor bytes;
  if (!top.try_read(fmt::format("rank{}", rank), bytes)) {
    throw Error(fmt::format("{}: holds no state for rank {}", state_path, rank));
  }
  bytes = bytes.cpu().contiguous();
  const std::string_view view(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                              static_cast<size_t>(bytes.numel()));
  if (const std::string fault = io::zip_archive_fault(view); !fault.empty()) {
    throw Error(fmt::format("{}: the state of rank {} is not an archive torch wrote: {}",
                            state_path, rank, fault));
  }
  storage.load_from(view.data(), view.size(), device);
  return storage;
}

// The default generator is a shared handle: setting a copy sets it.
void set_generator_state(const torch::Device& device, const torch::Tensor& state) {
  at::Generator generator = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.cpu());
}

}  // namespace

void TrainingLoop::write_rank_state(torch::serialize::OutputArchive& state) const {
  torch::serialize::OutputArchive generators;
  generators.write("cpu", at::globalContext().defaultGenerator(torch::kCPU).get_state());
  if (torch::cuda::is_available()) {
    for (int64_t i = 0; i < cuda_device_count(); ++i) {
      const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(i));
      generators.write(fmt::format("cuda{}", i),
                       at::globalContext().defaultGenerator(device).get_state());
    }
  }
  state.write("generators", generators);
  torch::serialize::OutputArchive metrics;
  for (size_t i = 0; i < state_.training_metrics.size(); ++i) {
    torch::serialize::OutputArchive metric;
    state_.training_metrics[i]->save(metric);
    metrics.write(fmt::format("m{}", i), metric);
  }
  state.write("metrics", metrics);
}

void TrainingLoop::check_checkpointable(bool inside_epochs) const {
  callback_states(callbacks_, state_.rank, /*save_all=*/false);
  if (!inside_epochs) return;
  for (const auto& metric : state_.training_metrics) {
    torch::serialize::OutputArchive trial;
    metric->save(trial);
  }
}

void TrainingLoop::save_checkpoint(const std::string& path, ResumePoint resume,
                                   const CheckpointNote& note) {
  // Each rank's own generators and running metrics go into the checkpoint,
  // so that each resumes exactly where it was.
  std::string mine;
  if (state_.world_size > 1) {
    torch::serialize::OutputArchive own;
    write_rank_state(own);
    mine = archive_bytes(own);
  }
  const std::vector<std::string> ranks = coordinator_->gather(mine);
  std::exception_ptr failure;
  if (state_.rank == 0) {
    try {
      auto callback_archives = callback_states(callbacks_, 0, /*save_all=*/true);
      detail::Manifest manifest;
      manifest.id = detail::new_checkpoint_id();
      manifest.info.resume = resume;
      manifest.info.global_step = state_.global_step;
      manifest.info.training_batches = state_.training_batch_count;
      manifest.info.world_size = state_.world_size;
      manifest.info.monitor = note.monitor;
      manifest.info.monitor_value = note.monitor_value;
      manifest.epoch_count = state_.epoch_count;
      manifest.history = state_.history;
      for (const auto& metric : state_.training_metrics) manifest.metrics.push_back(metric->name());
      for (const auto& callback : callbacks_) manifest.callbacks.push_back(callback->state_key());
      for (const auto& group : optimizer_.param_groups()) {
        manifest.optimizer_groups.push_back(static_cast<int64_t>(group.params().size()));
      }

      std::map<std::string, std::string> files;
      files[kModelFile] = detail::weights_bytes(*model_, (fs::path(path) / kModelFile).string());
      torch::serialize::OutputArchive optimizer;
      optimizer_.save(optimizer);
      files[kOptimizerFile] = archive_bytes(optimizer);
      // Rank 0's state at the top, where a fit of one process has it; rank
      // r's as bytes under "rank{r}".
      torch::serialize::OutputArchive state;
      write_rank_state(state);
      detail::write_identity(state, manifest.id, resume, state_.global_step);
      // LibTorch 1.13's Optimizer::save keeps no group options, so
      // a rate a callback set (a plateau's cut) would be lost on resume.
      std::vector<double> rates;
      for (const auto& group : optimizer_.param_groups()) rates.push_back(group.options().get_lr());
      state.write("learning_rates", torch::tensor(rates, torch::kDouble));
      // The same on every rank (the loss scale), so once.
      torch::serialize::OutputArchive precision;
      precision_->save(precision);
      state.write("precision", precision);
      for (size_t r = 1; r < ranks.size(); ++r) {
        torch::Tensor bytes = torch::empty({static_cast<int64_t>(ranks[r].size())}, torch::kUInt8);
        std::memcpy(bytes.data_ptr<uint8_t>(), ranks[r].data(), ranks[r].size());
        state.write(fmt::format("rank{}", r), bytes);
      }
      torch::serialize::OutputArchive callbacks;
      for (auto& [key, archive] : callback_archives) callbacks.write(key, *archive);
      state.write("callbacks", callbacks);
      files[kStateFile] = archive_bytes(state);
      detail::write_checkpoint(path, std::move(manifest), files);
    } catch (...) {
      failure = std::current_exception();
    }
  }
  // Doubles as the barrier that keeps every rank here until the checkpoint
  // is in place, and tells them whether it is.
  const bool failed = coordinator_->any(failure != nullptr);
  if (failure) std::rethrow_exception(failure);
  if (failed) {
    throw Error(fmt::format("{}: rank 0 could not write this checkpoint (its error says why)", path));
  }
}

int64_t TrainingLoop::restore_position(const detail::LoadedCheckpoint& checkpoint) {
  const detail::Manifest& manifest = checkpoint.manifest;
  const std::string& path = manifest.info.path;
  if (manifest.info.world_size != state_.world_size) {
    throw Error(fmt::format("{}: written by a fit of {} process{}, this one has {}; resume with "
                            "WORLD_SIZE={}",
                            path, manifest.info.world_size,
                            manifest.info.world_size == 1 ? "" : "es", state_.world_size,
                            manifest.info.world_size));
  }
  std::vector<std::string> metrics;
  for (const auto& metric : state_.training_metrics) metrics.push_back(metric->name());
  if (metrics != manifest.metrics) {
    throw Error(fmt::format("{}: saved with metrics [{}], this loop has [{}]", path,
                            fmt::join(manifest.metrics, ", "), fmt::join(metrics, ", ")));
  }
  std::vector<int64_t> sizes;
  for (const auto& group : optimizer_.param_groups()) {
    sizes.push_back(static_cast<int64_t>(group.params().size()));
  }
  if (sizes != manifest.optimizer_groups) {
    throw Error(fmt::format("{}: saved with optimizer parameter groups of sizes [{}], this "
                            "optimizer's are [{}]",
                            path, fmt::join(manifest.optimizer_groups, ", "), fmt::join(sizes, ", ")));
  }
  // Inside an epoch, the same batches must follow; at an epoch's end the next
  // epoch may be of any size.
  training_->start_epoch(manifest.info.resume.epoch);
  const int64_t batches = training_->batch_count();
  if (manifest.info.resume.batch > 0 && batches != manifest.info.training_batches) {
    throw Error(fmt::format("{}: saved with {} training batches per epoch, this loop's data has {} "
                            "(same data and batch size are needed to resume)",
                            path, manifest.info.training_batches, batches));
  }

  detail::apply_weights(*model_, checkpoint.files.at(kModelFile),
                        (fs::path(path) / kModelFile).string());
  const std::string optimizer_path = (fs::path(path) / kOptimizerFile).string();
  try {
    torch::serialize::InputArchive archive;
    const std::string& bytes = checkpoint.files.at(kOptimizerFile);
    archive.load_from(bytes.data(), bytes.size(), state_.device);
    optimizer_.load(archive);
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: does not fit this optimizer: {}", optimizer_path,
                            e.what_without_backtrace()));
  }
  const std::string& bytes = checkpoint.files.at(kStateFile);
  const std::string state_path = (fs::path(path) / kStateFile).string();
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size(), state_.device);
    torch::serialize::InputArchive storage;
    torch::serialize::InputArchive saved_metrics;
    rank_state(archive, storage, state_.rank, state_.device, state_path).read("metrics", saved_metrics);
    for (size_t i = 0; i < state_.training_metrics.size(); ++i) {
      torch::serialize::InputArchive metric;
      saved_metrics.read(fmt::format("m{}", i), metric);
      state_.training_metrics[i]->load(metric);
    }
    // Absent from checkpoints of an earlier version, whose rates are then
    // those Optimizer::load leaves.
    torch::Tensor rates;
    if (archive.try_read("learning_rates", rates)) {
      rates = rates.cpu().to(torch::kDouble);
      auto& groups = optimizer_.param_groups();
      if (rates.dim() != 1 || rates.numel() != static_cast<int64_t>(groups.size())) {
        throw Error(fmt::format("{}: holds {} learning rates, this optimizer has {} parameter groups",
                                state_path, rates.numel(), groups.size()));
      }
      for (size_t i = 0; i < groups.size(); ++i) {
        groups[i].options().set_lr(rates[static_cast<int64_t>(i)].item<double>());
      }
    }
    // Absent from older checkpoints and empty from a fit without a loss
    // scaler: the scaler then starts afresh.
    torch::serialize::InputArchive precision;
    if (archive.try_read("precision", precision) && !precision.keys().empty()) {
      precision_->load(precision);
    }
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: cannot read the running metrics or the loss scale: {}",
                            state_path, e.what_without_backtrace()));
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", state_path, e.what()));
  }
  state_.epoch = manifest.info.resume.epoch;
  state_.global_step = manifest.info.global_step;
  state_.history = manifest.history;
  state_.resumed_from = path;
  return manifest.info.resume.batch;
}

void TrainingLoop::restore_callbacks(const detail::LoadedCheckpoint& checkpoint) {
  const std::string state_path = (fs::path(checkpoint.manifest.info.path) / kStateFile).string();
  const std::string& bytes = checkpoint.files.at(kStateFile);
  torch::serialize::InputArchive archive;
  torch::serialize::InputArchive callbacks;
  torch::serialize::InputArchive generators;
  torch::serialize::InputArchive storage;
  try {
    archive.load_from(bytes.data(), bytes.size(), torch::kCPU);
    archive.read("callbacks", callbacks);
    rank_state(archive, storage, state_.rank, torch::kCPU, state_path).read("generators", generators);
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: cannot read the callbacks' state: {}", state_path,
                            e.what_without_backtrace()));
  }
  for (const auto& callback : callbacks_) {
    // Not run on this rank at all (see Callback::rank_zero_only).
    if (callback->rank_zero_only() && state_.rank != 0) continue;
    torch::serialize::InputArchive saved;
    if (!callbacks.try_read(archive_key(callback->state_key()), saved)) {
      // Said only of a callback that has state to lose.
      if (saved_state(*callback)) {
        std::cerr << "trainloop: " << checkpoint.manifest.info.path
                  << " holds no state for callback " << callback->state_key()
                  << "; it starts afresh\n";
      }
      continue;
    }
    try {
      callback->load(saved);
    } catch (const std::exception& e) {
      std::throw_with_nested(Error(fmt::format("{}: callback {} cannot load its state: {}",
                                               state_path, callback->state_key(), e.what())));
    }
  }
  torch::Tensor cpu;
  if (!generators.try_read("cpu", cpu)) {
    throw Error(fmt::format("{}: holds no CPU generator state", state_path));
  }
  try {
    set_generator_state(torch::kCPU, cpu);
    if (torch::cuda::is_available()) {
      for (int64_t i = 0; i < cuda_device_count(); ++i) {
        torch::Tensor saved;
        if (!generators.try_read(fmt::format("cuda{}", i), saved)) continue;
        const torch::Device device(torch::kCUDA, static_cast<c10::DeviceIndex>(i));
        set_generator_state(device, saved);
      }
    }
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: bad generator state: {}", state_path, e.what_without_backtrace()));
  }
}

}  // namespace trainloop
