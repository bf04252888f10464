#include "trainloop/checkpoint.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <ctime>
#include <exception>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string_view>
#include <tuple>

#include "checkpoint_restore.h"
#include "error_text.h"
#include "io/files.h"
#include "io/state_dict.h"
#include "io/zip_check.h"
#include "trainloop/error.h"
#include "trainloop/training_loop.h"

namespace trainloop {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kModelFile = "model.pt";
constexpr const char* kOptimizerFile = "optimizer.pt";
constexpr const char* kStateFile = "state.pt";
// A manifest holds a few numbers per epoch; anything this large is not one.
constexpr size_t kMaxManifestBytes = size_t{64} << 20;
// The largest file a checkpoint may hold (model weights included).
constexpr uint64_t kMaxFileBytes = uint64_t{1} << 40;

uint32_t crc32_of(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes at most uInt bytes a call.
  constexpr size_t kChunk = size_t{1} << 30;
  for (size_t at = 0; at < bytes.size(); at += kChunk) {
    const size_t n = std::min(kChunk, bytes.size() - at);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + at), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

// size_t before LibTorch 2.x, c10::DeviceIndex (signed) after.
int64_t cuda_device_count() { return static_cast<int64_t>(torch::cuda::device_count()); }

std::string shape_text(torch::IntArrayRef sizes) { return fmt::format("[{}]", fmt::join(sizes, ", ")); }

// JSON has no NaN or infinity; metric values may be either.
json number_to_json(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}

// A checkpoint's identity, in its manifest and its state.pt, so parts of
// different checkpoints cannot be mixed unnoticed. From the operating
// system, not from torch's generators, whose state is part of the fit.
std::string new_checkpoint_id() {
  std::random_device device;
  return fmt::format("{:08x}{:08x}", device(), device());
}

// The manifest's own checksum: the CRC-32 of its canonical text without the
// "checksum" field (nlohmann::json prints an object the same way however it
// was read, so whitespace does not matter and every value does).
std::string manifest_checksum(json manifest) {
  manifest.erase("checksum");
  return fmt::format("crc32:{:08x}", crc32_of(manifest.dump()));
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// The position in a checkpoint directory's name, when it has the name
// `callbacks::checkpoint` gives (see checkpoint_names).
std::optional<ResumePoint> named_position(const std::string& name) {
  static const std::regex pattern("epoch([0-9]{4,18})-batch([0-9]{6,18})");
  std::smatch match;
  if (!std::regex_match(name, match, pattern)) return std::nullopt;
  return ResumePoint{std::stoll(match[1]), std::stoll(match[2])};
}

std::string archive_bytes(torch::serialize::OutputArchive& archive) {
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

// Parameters and buffers by name, as a state dict.
std::vector<std::pair<std::string, torch::Tensor>> state_entries(const Model& model) {
  auto entries = model.named_parameters();
  for (auto& buffer : model.named_buffers()) entries.push_back(std::move(buffer));
  return entries;
}

// Named tensors as Python's torch.save(dict) writes them, so that
// torch.load's defaults read them (see io::state_dict_bytes). `target` names
// the file and `what` the tensors in an error.
std::string tensor_file_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                              const std::string& target, const char* what) {
  try {
    return io::state_dict_bytes(tensors);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: cannot write the {}: {}", target, what, e.what()));
  }
}

std::string weights_bytes(const Model& model, const std::string& target) {
  return tensor_file_bytes(state_entries(model), target, "weights");
}

// Copies a state dict into the model in place (an optimizer built on the
// model keeps referring to the same tensors). Checks everything first, so a
// mismatch leaves the model as it was.
void apply_weights(const Model& model, std::string_view bytes, const std::string& source) {
  std::map<std::string, io::StateEntry> saved;
  try {
    for (auto& entry : io::read_state_dict(bytes)) saved[entry.name] = std::move(entry);
  } catch (const Error& e) {
    throw Error(fmt::format("{}: not a state dict that torch can read: {}", source, e.what()));
  }
  const auto entries = state_entries(model);
  std::set<std::string> names;
  for (const auto& [name, tensor] : entries) {
    names.insert(name);
    const auto found = saved.find(name);
    if (found == saved.end()) {
      throw Error(fmt::format("{}: holds no \"{}\", which the model has (shape {})", source, name,
                              shape_text(tensor.sizes())));
    }
    if (!found->second.problem.empty()) {
      throw Error(fmt::format("{}: \"{}\" {}", source, name, found->second.problem));
    }
    if (found->second.tensor.sizes() != tensor.sizes()) {
      throw Error(fmt::format("{}: \"{}\" has shape {}, the model's has {}", source, name,
                              shape_text(found->second.tensor.sizes()), shape_text(tensor.sizes())));
    }
  }
  for (const auto& [name, entry] : saved) {
    if (names.count(name) == 0) {
      throw Error(fmt::format("{}: holds \"{}\"{}, which the model does not have", source, name,
                              entry.tensor.defined()
                                  ? fmt::format(" (shape {})", shape_text(entry.tensor.sizes()))
                                  : ""));
    }
  }
  // Every value is converted before any is copied, so a file that fails
  // leaves the model as it was.
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> values;
  for (const auto& [name, tensor] : entries) {
    const torch::Tensor& value = saved.at(name).tensor;
    try {
      values.push_back(value.to(tensor.device(), tensor.scalar_type()).contiguous());
    } catch (const c10::Error& e) {
      throw Error(fmt::format("{}: \"{}\" cannot be read: {}", source, name,
                              std::string(e.what_without_backtrace()).substr(0, 200)));
    }
  }
  for (size_t i = 0; i < entries.size(); ++i) entries[i].second.copy_(values[i]);
}

void check_unique_keys(const TrainingLoop& loop) {
  std::map<std::string, std::string> seen;
  for (const auto& callback : loop.callbacks()) {
    const std::string key = detail::archive_key(callback->state_key());
    const auto [at, inserted] = seen.emplace(key, callback->state_key());
    if (!inserted) {
      if (at->second == callback->state_key()) {
        throw Error(fmt::format("checkpoint: two callbacks share the state key \"{}\"; give one "
                                "of them another state_key()",
                                key.substr(3)));
      }
      throw Error(fmt::format("checkpoint: the state keys \"{}\" and \"{}\" are the same once "
                              "reduced to letters, digits and '_'; rename one",
                              at->second, callback->state_key()));
    }
  }
}

// What differs between the ranks of a data-parallel fit: the random
// generators and the running training metrics, written into `state`.
void write_rank_state(TrainingLoop& loop, torch::serialize::OutputArchive& state) {
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
  const auto& training = loop.state().training_metrics;
  for (size_t i = 0; i < training.size(); ++i) {
    torch::serialize::OutputArchive metric;
    training[i]->save(metric);
    metrics.write(fmt::format("m{}", i), metric);
  }
  state.write("metrics", metrics);
}

std::string rank_state_bytes(TrainingLoop& loop) {
  torch::serialize::OutputArchive state;
  write_rank_state(loop, state);
  return archive_bytes(state);
}

// Every rank's bytes, on every rank, in rank order (two all-gathers: the
// lengths, then the bytes padded to the longest).
std::vector<std::string> gather_bytes(distributed::ProcessGroup& group, const std::string& mine) {
  const auto lengths = group.all_gather(torch::tensor({static_cast<int64_t>(mine.size())}));
  int64_t longest = 0;
  for (const auto& length : lengths) longest = std::max(longest, length.item<int64_t>());
  torch::Tensor padded = torch::zeros({longest}, torch::kUInt8);
  std::memcpy(padded.data_ptr<uint8_t>(), mine.data(), mine.size());
  const auto gathered = group.all_gather(padded);
  std::vector<std::string> out;
  for (size_t r = 0; r < gathered.size(); ++r) {
    const torch::Tensor bytes = gathered[r].cpu().contiguous();
    out.emplace_back(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                     static_cast<size_t>(lengths[r].item<int64_t>()));
  }
  return out;
}

// `other_ranks[r - 1]`: rank r's state (see write_rank_state) in a
// data-parallel fit, stored as bytes under "rank{r}"; rank 0's (this
// process's) is at the top, where a fit of one process has it.
std::string state_bytes(TrainingLoop& loop, const std::vector<std::string>& other_ranks,
                        const std::string& id, ResumePoint resume) {
  torch::serialize::OutputArchive state;
  write_rank_state(loop, state);
  torch::serialize::OutputArchive identity;
  identity.write("id", c10::IValue(id));
  identity.write("position", torch::tensor({resume.epoch, resume.batch, loop.state().global_step}));
  state.write("identity", identity);
  for (size_t i = 0; i < other_ranks.size(); ++i) {
    const std::string& bytes = other_ranks[i];
    torch::Tensor tensor = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
    std::memcpy(tensor.data_ptr<uint8_t>(), bytes.data(), bytes.size());
    state.write(fmt::format("rank{}", i + 1), tensor);
  }

  torch::serialize::OutputArchive callbacks;
  for (const auto& callback : loop.callbacks()) {
    torch::serialize::OutputArchive archive;
    try {
      callback->save(archive);
    } catch (const std::exception& e) {
      throw Error(fmt::format("checkpoint: callback {} failed to save its state: {}",
                              callback->state_key(), e.what()));
    }
    callbacks.write(detail::archive_key(callback->state_key()), archive);
  }
  state.write("callbacks", callbacks);
  return archive_bytes(state);
}

json manifest_json(TrainingLoop& loop, ResumePoint resume, const CheckpointNote& note,
                   const std::map<std::string, std::string>& files, const std::string& id) {
  const LoopState& state = loop.state();
  json manifest;
  manifest["format"] = kCheckpointFormat;
  manifest["id"] = id;
  manifest["created"] = utc_now();
  manifest["resume"] = {{"epoch", resume.epoch}, {"batch", resume.batch}};
  manifest["global_step"] = state.global_step;
  manifest["epoch_count"] = state.epoch_count;
  manifest["training_batches"] = state.training_batch_count;
  manifest["world_size"] = state.world_size;
  json history = json::array();
  for (const auto& epoch : state.history) {
    json values = json::object();
    for (const auto& [name, value] : epoch) values[name] = number_to_json(value);
    history.push_back(values);
  }
  manifest["history"] = history;
  json metrics = json::array();
  for (const auto& metric : state.training_metrics) metrics.push_back(metric->name());
  manifest["metrics"] = metrics;
  json callbacks = json::array();
  for (const auto& callback : loop.callbacks()) callbacks.push_back(callback->state_key());
  manifest["callbacks"] = callbacks;
  json groups = json::array();
  for (const auto& group : loop.optimizer().param_groups()) {
    groups.push_back(static_cast<int64_t>(group.params().size()));
  }
  manifest["optimizer_groups"] = groups;
  if (!note.monitor.empty()) {
    manifest["monitor"] = {{"name", note.monitor},
                           {"value", number_to_json(note.monitor_value.value_or(NAN))}};
  }
  json entries = json::object();
  for (const auto& [name, bytes] : files) {
    entries[name] = {{"bytes", bytes.size()}, {"crc32", crc32_of(bytes)}};
  }
  manifest["files"] = entries;
  manifest["checksum"] = manifest_checksum(manifest);
  return manifest;
}

// Writes a file inside the private temporary directory and syncs it.
void write_synced(const fs::path& path, std::string_view bytes) {
  io::write_atomically(path.string(), bytes, /*durable=*/true);
}

}  // namespace

std::string checkpoint_name(ResumePoint resume) {
  return fmt::format("epoch{:04}-batch{:06}", resume.epoch, resume.batch);
}

std::vector<std::string> checkpoint_names(const std::string& directory) {
  std::vector<std::pair<ResumePoint, std::string>> found;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    const auto point = named_position(name);
    if (!point || !entry.is_directory(error)) continue;
    found.emplace_back(*point, name);
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first.epoch, a.first.batch) < std::tie(b.first.epoch, b.first.batch);
  });
  std::vector<std::string> names;
  for (auto& [point, name] : found) names.push_back(std::move(name));
  return names;
}

namespace {

void write_checkpoint(TrainingLoop& loop, const std::string& path, ResumePoint resume,
                      const CheckpointNote& note, const std::vector<std::string>& other_ranks) {
  std::map<std::string, std::string> files;
  files[kModelFile] = weights_bytes(loop.model(), (fs::path(path) / kModelFile).string());
  {
    torch::serialize::OutputArchive optimizer;
    loop.optimizer().save(optimizer);
    files[kOptimizerFile] = archive_bytes(optimizer);
  }
  const std::string id = new_checkpoint_id();
  files[kStateFile] = state_bytes(loop, other_ranks, id, resume);
  const std::string manifest = manifest_json(loop, resume, note, files, id).dump(1);

  const fs::path target(path);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string name = target.filename().string();
  const fs::path temporary = parent / fmt::format(".tmp-{}-{}", name, getpid());
  std::error_code error;
  fs::create_directories(parent, error);
  if (error) throw Error(fmt::format("{}: cannot create directory: {}", parent.string(), error.message()));
  fs::remove_all(temporary, error);
  if (!fs::create_directory(temporary, error) || error) {
    throw Error(fmt::format("{}: cannot create directory: {}", temporary.string(),
                            error ? error.message() : "it exists"));
  }
  try {
    for (const auto& [file, bytes] : files) write_synced(temporary / file, bytes);
    // The manifest last: a directory with one is complete.
    write_synced(temporary / kManifest, manifest);
    io::sync_path(temporary.string());
    if (fs::exists(target)) {
      // rename() cannot replace a non-empty directory: move the old one aside
      // first. A crash in between loses only this (older) checkpoint.
      const fs::path old = parent / fmt::format(".old-{}-{}", name, getpid());
      fs::remove_all(old);
      fs::rename(target, old);
      fs::rename(temporary, target);
      fs::remove_all(old);
    } else {
      fs::rename(temporary, target);
    }
    io::sync_path(parent.string());
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temporary, error);
    throw Error(fmt::format("{}: cannot write the checkpoint: {}", path, e.code().message()));
  } catch (...) {
    fs::remove_all(temporary, error);
    throw;
  }
}

}  // namespace

void save_checkpoint(TrainingLoop& loop, const std::string& path, ResumePoint resume,
                     const CheckpointNote& note) {
  check_unique_keys(loop);
  const auto& group = loop.process_group();
  if (!group || loop.state().world_size <= 1) {
    write_checkpoint(loop, path, resume, note, {});
    return;
  }
  // Each rank's own generators and running metrics go into the checkpoint,
  // so that each resumes exactly where it was.
  std::vector<std::string> ranks = gather_bytes(*group, rank_state_bytes(loop));
  std::exception_ptr failure;
  if (loop.state().rank == 0) {
    try {
      write_checkpoint(loop, path, resume, note,
                       std::vector<std::string>(ranks.begin() + 1, ranks.end()));
    } catch (...) {
      failure = std::current_exception();
    }
  }
  // Doubles as the barrier that keeps every rank here until the checkpoint
  // is in place, and tells them whether it is.
  torch::Tensor failed = torch::tensor({failure ? int64_t{1} : int64_t{0}});
  group->all_reduce(failed, ReduceOp::max);
  if (failure) std::rethrow_exception(failure);
  if (failed.item<int64_t>() != 0) {
    throw Error(fmt::format("{}: rank 0 could not write this checkpoint (its error says why)", path));
  }
}

CheckpointInfo verify_checkpoint(const std::string& path) {
  return detail::read_checkpoint(path).manifest.info;
}

void save_weights(const Model& model, const std::string& path) {
  io::write_atomically(path, weights_bytes(model, path), /*durable=*/true);
}

void load_weights(Model& model, const std::string& path) {
  apply_weights(model, io::read_file(path, kMaxFileBytes), path);
}

void save_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::string& path) {
  io::write_atomically(path, tensor_file_bytes(tensors, path, "tensors"), /*durable=*/true);
}

std::vector<std::pair<std::string, torch::Tensor>> load_tensors(const std::string& path) {
  const std::string bytes = io::read_file(path, kMaxFileBytes);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  try {
    for (auto& entry : io::read_state_dict(bytes)) {
      if (!entry.problem.empty()) throw Error(fmt::format("\"{}\" {}", entry.name, entry.problem));
      tensors.emplace_back(std::move(entry.name), std::move(entry.tensor));
    }
  } catch (const Error& e) {
    throw Error(fmt::format("{}: not a dict of tensors that torch can read: {}", path, e.what()));
  }
  return tensors;
}

namespace detail {

void check_checkpointable(const TrainingLoop& loop, bool inside_epochs) {
  check_unique_keys(loop);
  if (!inside_epochs) return;
  for (const auto& metric : loop.state().training_metrics) {
    torch::serialize::OutputArchive trial;
    metric->save(trial);
  }
}

std::string archive_key(const std::string& key) {
  // A prefix, because archives are TorchScript modules whose attribute
  // names must not be Python keywords ("raise") or start with a digit.
  std::string out = "cb_";
  for (const char c : key) {
    out.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  }
  return out;
}

namespace {

[[noreturn]] void bad_field(const std::string& source, const std::string& field,
                            const std::string& expected) {
  throw Error(fmt::format("{}: field \"{}\": expected {}", source, field, expected));
}

// `field` is a view, not a const std::string&: the callers bind the returned
// reference, and a temporary string argument made g++ 14 warn that it might
// dangle (-Wdangling-reference).
const json& member(const json& object, const char* key, const std::string& source,
                   std::string_view field) {
  const auto found = object.find(key);
  if (found == object.end()) throw Error(fmt::format("{}: field \"{}\" is missing", source, field));
  return *found;
}

int64_t non_negative(const json& object, const char* key, const std::string& source,
                     const std::string& prefix = "") {
  const std::string field = prefix + key;
  const json& value = member(object, key, source, field);
  if (!value.is_number_integer() || value.get<int64_t>() < 0) {
    bad_field(source, field, "an integer >= 0");
  }
  return value.get<int64_t>();
}

double metric_number(const json& value, const std::string& source, const std::string& field) {
  if (value.is_number()) return value.get<double>();
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    if (text == "nan") return NAN;
    if (text == "inf") return INFINITY;
    if (text == "-inf") return -INFINITY;
  }
  bad_field(source, field, "a number, \"nan\", \"inf\" or \"-inf\"");
}

std::vector<std::string> string_list(const json& object, const char* key,
                                     const std::string& source) {
  const json& value = member(object, key, source, key);
  if (!value.is_array()) bad_field(source, key, "an array of strings");
  std::vector<std::string> out;
  for (const auto& item : value) {
    if (!item.is_string()) bad_field(source, key, "an array of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

}  // namespace

Manifest parse_manifest(std::string_view text, const std::string& source) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  if (!root.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  const json& format = member(root, "format", source, "format");
  if (!format.is_number_integer()) bad_field(source, "format", "an integer");
  if (format.get<int64_t>() != kCheckpointFormat) {
    throw Error(fmt::format("{}: checkpoint format {}, this build reads {}", source,
                            format.dump(), kCheckpointFormat));
  }
  Manifest manifest;
  const json& id = member(root, "id", source, "id");
  if (!id.is_string() || id.get_ref<const std::string&>().size() != 16 ||
      id.get_ref<const std::string&>().find_first_not_of("0123456789abcdef") != std::string::npos) {
    bad_field(source, "id", "16 hexadecimal digits");
  }
  manifest.id = id.get<std::string>();
  const json& resume = member(root, "resume", source, "resume");
  if (!resume.is_object()) bad_field(source, "resume", "an object");
  manifest.info.resume.epoch = non_negative(resume, "epoch", source, "resume.");
  manifest.info.resume.batch = non_negative(resume, "batch", source, "resume.");
  manifest.info.global_step = non_negative(root, "global_step", source);
  manifest.info.training_batches = non_negative(root, "training_batches", source);
  manifest.epoch_count = non_negative(root, "epoch_count", source);
  // Written by data-parallel fits; older checkpoints are of one process.
  if (root.contains("world_size")) {
    manifest.info.world_size = non_negative(root, "world_size", source);
    if (manifest.info.world_size < 1) bad_field(source, "world_size", "an integer >= 1");
  }
  if (manifest.info.resume.batch > manifest.info.training_batches) {
    throw Error(fmt::format("{}: field \"resume.batch\" is {}, past the {} training batches",
                            source, manifest.info.resume.batch, manifest.info.training_batches));
  }

  const json& history = member(root, "history", source, "history");
  if (!history.is_array()) bad_field(source, "history", "an array of objects");
  for (size_t i = 0; i < history.size(); ++i) {
    const std::string field = fmt::format("history[{}]", i);
    if (!history[i].is_object()) bad_field(source, field, "an object of metric values");
    std::map<std::string, double> values;
    for (const auto& [name, value] : history[i].items()) {
      values[name] = metric_number(value, source, field + "." + name);
    }
    manifest.history.push_back(std::move(values));
  }
  manifest.metrics = string_list(root, "metrics", source);
  manifest.callbacks = string_list(root, "callbacks", source);

  const json& groups = member(root, "optimizer_groups", source, "optimizer_groups");
  if (!groups.is_array()) bad_field(source, "optimizer_groups", "an array of integers");
  for (const auto& group : groups) {
    if (!group.is_number_integer() || group.get<int64_t>() < 0) {
      bad_field(source, "optimizer_groups", "an array of integers >= 0");
    }
    manifest.optimizer_groups.push_back(group.get<int64_t>());
  }

  if (const auto found = root.find("monitor"); found != root.end()) {
    if (!found->is_object()) bad_field(source, "monitor", "an object");
    const json& name = member(*found, "name", source, "monitor.name");
    if (!name.is_string()) bad_field(source, "monitor.name", "a string");
    manifest.info.monitor = name.get<std::string>();
    manifest.info.monitor_value =
        metric_number(member(*found, "value", source, "monitor.value"), source, "monitor.value");
  }

  const json& files = member(root, "files", source, "files");
  if (!files.is_object()) bad_field(source, "files", "an object");
  for (const char* required : {kModelFile, kOptimizerFile, kStateFile}) {
    const std::string field = std::string("files.") + required;
    const json& entry = member(files, required, source, field);
    if (!entry.is_object()) bad_field(source, field, "an object");
    const int64_t bytes = non_negative(entry, "bytes", source, field + ".");
    const int64_t crc = non_negative(entry, "crc32", source, field + ".");
    if (static_cast<uint64_t>(bytes) > kMaxFileBytes || crc > 0xffffffffLL) {
      bad_field(source, field, "a size of at most 1 TiB and a 32-bit CRC");
    }
    manifest.files[required] = {static_cast<uint64_t>(bytes), static_cast<uint32_t>(crc)};
  }
  // Last, so every field above is checked (and fuzzed) on its own.
  const json& checksum = member(root, "checksum", source, "checksum");
  if (!checksum.is_string()) bad_field(source, "checksum", "a string \"crc32:<8 hex digits>\"");
  const std::string expected = manifest_checksum(root);
  if (checksum.get_ref<const std::string&>() != expected) {
    throw Error(fmt::format("{}: its checksum {} does not match its contents ({}): the manifest "
                            "was changed after it was written",
                            source, checksum.get_ref<const std::string&>(), expected));
  }
  return manifest;
}

namespace {

// The directory's name, the manifest and state.pt must tell of one
// checkpoint: parts copied from different ones make it invalid.
void check_name(const Manifest& manifest, const std::string& path) {
  const ResumePoint resume = manifest.info.resume;
  const std::string name = fs::path(path).filename().string();
  if (const auto named = named_position(name);
      named && (named->epoch != resume.epoch || named->batch != resume.batch)) {
    throw Error(fmt::format("{}: the directory's name says epoch {} batch {}, its manifest says "
                            "epoch {} batch {}: the manifest belongs to another checkpoint",
                            path, named->epoch, named->batch, resume.epoch, resume.batch));
  }
}

void check_identity(const LoadedCheckpoint& checkpoint, const std::string& path) {
  const Manifest& manifest = checkpoint.manifest;
  const ResumePoint resume = manifest.info.resume;
  const std::string state_path = (fs::path(path) / kStateFile).string();
  const std::string& bytes = checkpoint.files.at(kStateFile);
  std::string id;
  torch::Tensor position;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size(), torch::kCPU);
    torch::serialize::InputArchive identity;
    c10::IValue saved_id;
    if (!archive.try_read("identity", identity) || !identity.try_read("id", saved_id) ||
        !saved_id.isString() || !identity.try_read("position", position)) {
      throw Error(fmt::format("{}: holds no checkpoint identity", state_path));
    }
    id = saved_id.toStringRef();
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: cannot be read: {}", state_path, detail::first_line(e)));
  }
  const std::vector<int64_t> expected{resume.epoch, resume.batch, manifest.info.global_step};
  const bool same_position = position.scalar_type() == torch::kLong && position.dim() == 1 &&
                             position.numel() == 3 &&
                             std::vector<int64_t>(position.data_ptr<int64_t>(),
                                                  position.data_ptr<int64_t>() + 3) == expected;
  if (id != manifest.id || !same_position) {
    throw Error(fmt::format("{}: belongs to another checkpoint (id {}, the manifest's {})",
                            state_path, id, manifest.id));
  }
}

}  // namespace

LoadedCheckpoint read_checkpoint(const std::string& path) {
  const fs::path directory(path);
  if (!fs::is_directory(directory)) {
    throw Error(fmt::format("{}: not a checkpoint directory ({})", path,
                            fs::exists(directory) ? "not a directory" : "does not exist"));
  }
  const std::string manifest_path = (directory / kManifest).string();
  LoadedCheckpoint checkpoint;
  checkpoint.manifest = parse_manifest(io::read_file(manifest_path, kMaxManifestBytes), manifest_path);
  checkpoint.manifest.info.path = path;
  check_name(checkpoint.manifest, path);
  for (const auto& [name, expected] : checkpoint.manifest.files) {
    const std::string file = (directory / name).string();
    // At most one byte more than promised is read, so a bad manifest or an
    // appended file cannot make a large allocation.
    std::string bytes = io::read_file(file, expected.first);
    if (bytes.size() != expected.first) {
      throw Error(fmt::format("{}: {} bytes, the manifest says {} (truncated?)", file,
                              bytes.size(), expected.first));
    }
    const uint32_t crc = crc32_of(bytes);
    if (crc != expected.second) {
      throw Error(fmt::format("{}: CRC-32 0x{:08x}, the manifest says 0x{:08x} (corrupted)", file,
                              crc, expected.second));
    }
    // A manifest can be forged to match any file; LibTorch's reader must
    // still see only well-formed archives.
    if (const std::string fault = io::zip_archive_fault(bytes); !fault.empty()) {
      throw Error(fmt::format("{}: not an archive torch wrote: {}", file, fault));
    }
    checkpoint.files[name] = std::move(bytes);
  }
  check_identity(checkpoint, path);
  return checkpoint;
}

std::optional<LoadedCheckpoint> load_for_resume(const std::string& path) {
  const fs::path root(path);
  std::error_code error;
  if (!fs::exists(root, error)) {
    // Like Lightning's ckpt_path="last": a program may always pass the
    // directory its checkpoint callback writes, before the first exists.
    std::cerr << "trainloop: " << path << " does not exist yet, starting from the beginning\n";
    return std::nullopt;
  }
  if (fs::exists(root / kManifest, error)) return read_checkpoint(path);
  if (!fs::is_directory(root)) {
    throw Error(fmt::format("{}: cannot resume: not a checkpoint directory", path));
  }
  std::vector<std::string> names = checkpoint_names(path);
  if (names.empty()) {
    std::cerr << "trainloop: no checkpoint in " << path << ", starting from the beginning\n";
    return std::nullopt;
  }
  // The first invalid one is named with its problem; the rest are counted,
  // so thousands of stray directories make one line, not thousands.
  std::string first_problem;
  int64_t skipped = 0;
  for (auto name = names.rbegin(); name != names.rend(); ++name) {
    const std::string candidate = (root / *name).string();
    try {
      LoadedCheckpoint checkpoint = read_checkpoint(candidate);
      if (skipped > 1) {
        std::cerr << "trainloop: skipped " << skipped - 1 << " more invalid checkpoint"
                  << (skipped == 2 ? "" : "s") << " in " << path << "\n";
      }
      if (skipped > 0) std::cerr << "trainloop: resuming from " << candidate << "\n";
      return checkpoint;
    } catch (const Error& e) {
      if (skipped++ == 0) {
        std::cerr << "trainloop: skipping invalid checkpoint " << candidate << ": " << e.what()
                  << "\n";
        first_problem = e.what();
      }
    }
  }
  throw Error(fmt::format("{}: cannot resume: none of its {} checkpoints is valid; the newest: {}",
                          path, names.size(), first_problem));
}

namespace {

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
  storage.load_from(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()),
                    static_cast<size_t>(bytes.numel()), device);
  return storage;
}

}  // namespace

int64_t restore_loop(TrainingLoop& loop, const LoadedCheckpoint& checkpoint) {
  const Manifest& manifest = checkpoint.manifest;
  const std::string& path = manifest.info.path;
  LoopState& state = loop.state();

  if (manifest.info.world_size != state.world_size) {
    throw Error(fmt::format("{}: written by a fit of {} process{}, this one has {}; resume with "
                            "WORLD_SIZE={}",
                            path, manifest.info.world_size,
                            manifest.info.world_size == 1 ? "" : "es", state.world_size,
                            manifest.info.world_size));
  }
  std::vector<std::string> metrics;
  for (const auto& metric : state.training_metrics) metrics.push_back(metric->name());
  if (metrics != manifest.metrics) {
    throw Error(fmt::format("{}: saved with metrics [{}], this loop has [{}]", path,
                            fmt::join(manifest.metrics, ", "), fmt::join(metrics, ", ")));
  }
  const auto& groups = loop.optimizer().param_groups();
  std::vector<int64_t> sizes;
  for (const auto& group : groups) sizes.push_back(static_cast<int64_t>(group.params().size()));
  if (sizes != manifest.optimizer_groups) {
    throw Error(fmt::format("{}: saved with optimizer parameter groups of sizes [{}], this "
                            "optimizer's are [{}]",
                            path, fmt::join(manifest.optimizer_groups, ", "), fmt::join(sizes, ", ")));
  }
  // Inside an epoch, the same batches must follow; at an epoch's end the next
  // epoch may be of any size.
  loop.training_data()->start_epoch(manifest.info.resume.epoch);
  const int64_t batches = loop.training_data()->batch_count();
  if (manifest.info.resume.batch > 0 && batches != manifest.info.training_batches) {
    throw Error(fmt::format("{}: saved with {} training batches per epoch, this loop's data has {} "
                            "(same data and batch size are needed to resume)",
                            path, manifest.info.training_batches, batches));
  }

  apply_weights(loop.model(), checkpoint.files.at(kModelFile),
                (fs::path(path) / kModelFile).string());
  const std::string optimizer_path = (fs::path(path) / kOptimizerFile).string();
  try {
    torch::serialize::InputArchive archive;
    const std::string& bytes = checkpoint.files.at(kOptimizerFile);
    archive.load_from(bytes.data(), bytes.size(), state.device);
    loop.optimizer().load(archive);
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: does not fit this optimizer: {}", optimizer_path,
                            e.what_without_backtrace()));
  }
  torch::serialize::InputArchive archive;
  const std::string& bytes = checkpoint.files.at(kStateFile);
  const std::string state_path = (fs::path(path) / kStateFile).string();
  try {
    archive.load_from(bytes.data(), bytes.size(), state.device);
    torch::serialize::InputArchive storage;
    torch::serialize::InputArchive saved_metrics;
    rank_state(archive, storage, state.rank, state.device, state_path).read("metrics", saved_metrics);
    for (size_t i = 0; i < state.training_metrics.size(); ++i) {
      torch::serialize::InputArchive metric;
      saved_metrics.read(fmt::format("m{}", i), metric);
      state.training_metrics[i]->load(metric);
    }
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: cannot read the running metrics: {}", state_path,
                            e.what_without_backtrace()));
  }
  state.epoch = manifest.info.resume.epoch;
  state.global_step = manifest.info.global_step;
  state.history = manifest.history;
  state.resumed_from = path;
  return manifest.info.resume.batch;
}

namespace {

// The default generator is a shared handle: setting a copy sets it.
void set_generator_state(const torch::Device& device, const torch::Tensor& state) {
  at::Generator generator = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.cpu());
}

}  // namespace

void restore_callbacks(TrainingLoop& loop, const LoadedCheckpoint& checkpoint) {
  const std::string state_path = (fs::path(checkpoint.manifest.info.path) / kStateFile).string();
  const std::string& bytes = checkpoint.files.at(kStateFile);
  torch::serialize::InputArchive archive;
  torch::serialize::InputArchive callbacks;
  torch::serialize::InputArchive generators;
  torch::serialize::InputArchive storage;
  try {
    archive.load_from(bytes.data(), bytes.size(), torch::kCPU);
    archive.read("callbacks", callbacks);
    rank_state(archive, storage, loop.state().rank, torch::kCPU, state_path)
        .read("generators", generators);
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: cannot read the callbacks' state: {}", state_path,
                            e.what_without_backtrace()));
  }
  for (const auto& callback : loop.callbacks()) {
    // Not run on this rank at all (see Callback::rank_zero_only).
    if (callback->rank_zero_only() && loop.state().rank != 0) continue;
    torch::serialize::InputArchive saved;
    if (!callbacks.try_read(archive_key(callback->state_key()), saved)) {
      std::cerr << "trainloop: " << checkpoint.manifest.info.path << " holds no state for callback "
                << callback->state_key() << "; it starts afresh\n";
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

}  // namespace detail
}  // namespace trainloop
