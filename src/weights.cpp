#include "trainloop/weights.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <set>
#include <string_view>

#include "error_text.h"
#include "io/files.h"
#include "io/state_dict.h"
#include "trainloop/error.h"
#include "weights_bytes.h"

namespace trainloop {

namespace {

// The largest weights file read (1 TiB): a bound, not a limit anyone meets.
constexpr uint64_t kMaxWeightsFileBytes = uint64_t{1} << 40;

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


}  // namespace

namespace detail {

std::string weights_bytes(const Model& model, const std::string& target) {
  return tensor_file_bytes(state_entries(model), target, "weights");
}

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
                              trainloop::detail::sizes_text(tensor.sizes())));
    }
    if (!found->second.problem.empty()) {
      throw Error(fmt::format("{}: \"{}\" {}", source, name, found->second.problem));
    }
    if (found->second.tensor.sizes() != tensor.sizes()) {
      throw Error(fmt::format("{}: \"{}\" has shape {}, the model's has {}", source, name,
                              trainloop::detail::sizes_text(found->second.tensor.sizes()), trainloop::detail::sizes_text(tensor.sizes())));
    }
  }
  for (const auto& [name, entry] : saved) {
    if (names.count(name) == 0) {
      throw Error(fmt::format("{}: holds \"{}\"{}, which the model does not have", source, name,
                              entry.tensor.defined()
                                  ? fmt::format(" (shape {})", trainloop::detail::sizes_text(entry.tensor.sizes()))
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

}  // namespace detail

void save_weights(const Model& model, const std::string& path) {
  io::write_atomically(path, detail::weights_bytes(model, path), /*durable=*/true);
}

void load_weights(Model& model, const std::string& path) {
  detail::apply_weights(model, io::read_file(path, kMaxWeightsFileBytes), path);
}

void save_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                  const std::string& path) {
  io::write_atomically(path, tensor_file_bytes(tensors, path, "tensors"), /*durable=*/true);
}

std::vector<std::pair<std::string, torch::Tensor>> load_tensors(const std::string& path) {
  const std::string bytes = io::read_file(path, kMaxWeightsFileBytes);
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

}  // namespace trainloop
