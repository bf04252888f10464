// What the benchmarks share: clocks that other processes can compare, the
// peak resident memory, medians, loading weights saved by another program,
// and a small JSON writer for the one result line each run prints.
#pragma once

#include <trainloop/trainloop.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <dlfcn.h>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>


namespace trainloop::bench {

/// Seconds on CLOCK_MONOTONIC (libstdc++'s steady_clock), the clock Python's
/// time.monotonic() reads: the driver subtracts these from its own readings
/// to split a process's wall time into start-up, loading and training.
inline double monotonic_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// Seconds since `start` (a `monotonic_seconds()` reading).
inline double seconds_since(double start) { return monotonic_seconds() - start; }

/// CPU seconds this process has used (all threads, user and system). On a
/// machine shared with other work, wall time also counts the time others
/// held the core; for a loop on one thread, CPU time counts only its own
/// work. Python's time.process_time() reads the same clock.
inline double cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

/// Sets the threads of OpenBLAS's own pool, where this LibTorch computes
/// float32 matrix products with OpenBLAS (Debian's does): that pool ignores
/// `torch::set_num_threads`, so a "one thread" run otherwise multiplies on
/// every core. Returns OpenBLAS's thread count afterwards, or 0 when no
/// OpenBLAS is loaded (looked up at run time, so nothing links against it).
inline int set_openblas_threads(int threads) {
  using Set = void (*)(int);
  using Get = int (*)();
  const auto set = reinterpret_cast<Set>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  const auto get = reinterpret_cast<Get>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (set == nullptr || get == nullptr) return 0;
  set(threads);
  return get();
}

/// Wall and CPU seconds of one timed piece of work.
struct Times {
  double wall = 0;
  double cpu = 0;
};

/// Starts both clocks; `elapsed()` reads both.
class Stopwatch {
 public:
  Stopwatch() : wall_(monotonic_seconds()), cpu_(cpu_seconds()) {}
  Times elapsed() const { return {monotonic_seconds() - wall_, cpu_seconds() - cpu_}; }

 private:
  double wall_;
  double cpu_;
};

/// A line of /proc/self/status in kB ("VmHWM": peak resident, "VmRSS": now);
/// -1 where there is no /proc.
inline int64_t proc_status_kb(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  return -1;
}

/// The median; NaN for no values.
inline double median(std::vector<double> values) {
  if (values.empty()) return std::nan("");
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

/// Reads a dict of tensors that `save_pickle` or Python's `torch.save` wrote.
inline c10::IValue load_pickle(const std::string& path) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (auto& [name, tensor] : load_tensors(path)) dict.insert(name, tensor);
  return dict;
}

/// Writes `dict` as Python's `torch.save` does, so that `torch.load(path)`
/// reads it with its defaults (weights_only=True from PyTorch 2.6), which
/// refuse what `torch::pickle_save` writes.
inline void save_pickle(const c10::Dict<std::string, torch::Tensor>& dict, const std::string& path) {
  std::vector<std::pair<std::string, torch::Tensor>> entries;
  for (const auto& entry : dict) entries.emplace_back(entry.key(), entry.value());
  save_tensors(entries, path);
}

/// A dict of tensors by name, as Python sees a state dict.
inline c10::Dict<std::string, torch::Tensor> tensor_dict(
    const std::vector<std::pair<std::string, torch::Tensor>>& items) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& [name, tensor] : items) dict.insert(name, tensor);
  return dict;
}

/// Entry `key` of a dict of tensors read by `load_pickle`.
inline torch::Tensor tensor_at(const c10::IValue& dict, const std::string& key) {
  for (const auto& entry : dict.toGenericDict()) {
    if (entry.key().toStringRef() == key) return entry.value().toTensor();
  }
  throw Error(fmt::format("no tensor \"{}\" in the exported file", key));
}

/// The parameters of `module` as a dict (a state dict without buffers).
inline c10::Dict<std::string, torch::Tensor> parameters_of(const torch::nn::Module& module) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& item : module.named_parameters()) dict.insert(item.key(), item.value().detach().clone());
  return dict;
}

/// Copies the saved parameters into `module`; every name and shape must match,
/// so all implementations start from the same weights.
inline void load_parameters(torch::nn::Module& module, const c10::IValue& saved) {
  torch::NoGradGuard no_grad;
  auto parameters = module.named_parameters();
  int64_t found = 0;
  for (auto& item : parameters) {
    const torch::Tensor value = tensor_at(saved, item.key());
    if (value.sizes() != item.value().sizes()) {
      throw Error(fmt::format("parameter {}: saved shape differs", item.key()));
    }
    item.value().copy_(value);
    ++found;
  }
  if (found != static_cast<int64_t>(saved.toGenericDict().size())) {
    throw Error("the saved weights hold parameters the model does not have");
  }
}

/// `[1.5, 2, ...]`, for JSON.
inline std::string json_list(const std::vector<double>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    text += (i ? ", " : "") + (std::isfinite(values[i]) ? fmt::format("{:.9g}", values[i]) : "null");
  }
  return text + "]";
}

/// One result line: `RESULT {"key": value, ...}`, which the driver parses.
class JsonLine {
 public:
  JsonLine& add(const std::string& key, double value) {
    return raw(key, std::isfinite(value) ? fmt::format("{:.9g}", value) : "null");
  }
  JsonLine& add(const std::string& key, int64_t value) { return raw(key, std::to_string(value)); }
  JsonLine& add(const std::string& key, const std::string& value) {
    return raw(key, "\"" + value + "\"");  // keys and values here are plain words
  }
  JsonLine& add(const std::string& key, const std::vector<double>& values) {
    return raw(key, json_list(values));
  }
  /// `{...}` without the RESULT prefix, e.g. to nest.
  std::string str() const { return "{" + body_ + "}"; }
  JsonLine& raw(const std::string& key, const std::string& json) {
    body_ += (body_.empty() ? "\"" : ", \"") + key + "\": " + json;
    return *this;
  }

 private:
  std::string body_;
};

}  // namespace trainloop::bench
