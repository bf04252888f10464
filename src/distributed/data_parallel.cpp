#include "data_parallel.h"

#include <fmt/format.h>

#include <map>
#include <tuple>

#include "trainloop/error.h"

namespace trainloop::detail {

void check_same_on_every_rank(distributed::ProcessGroup& group,
                              const std::vector<std::pair<std::string, int64_t>>& values) {
  if (values.empty()) return;
  // The maximum of v and of -v: both ends of the range, in one all-reduce.
  const auto n = static_cast<int64_t>(values.size());
  torch::Tensor ends = torch::empty({2 * n}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    ends[i] = values[static_cast<size_t>(i)].second;
    ends[n + i] = -values[static_cast<size_t>(i)].second;
  }
  group.all_reduce(ends, ReduceOp::max);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t largest = ends[i].item<int64_t>();
    const int64_t smallest = -ends[n + i].item<int64_t>();
    if (largest != smallest) {
      const auto& [what, mine] = values[static_cast<size_t>(i)];
      throw Error(fmt::format("data_parallel: {} differ between ranks: {} to {} (rank {} has {})",
                              what, smallest, largest, group.rank(), mine));
    }
  }
}

void broadcast_model(distributed::ProcessGroup& group, const Model& model) {
  std::vector<torch::Tensor> tensors;
  for (const auto& [name, parameter] : model.named_parameters()) tensors.push_back(parameter);
  for (const auto& [name, buffer] : model.named_buffers()) tensors.push_back(buffer);
  // Flattened by dtype and device: one broadcast each, not one per tensor.
  std::map<std::tuple<torch::ScalarType, std::string>, std::vector<torch::Tensor>> groups;
  for (const auto& tensor : tensors) {
    if (!tensor.defined() || tensor.numel() == 0) continue;
    groups[{tensor.scalar_type(), tensor.device().str()}].push_back(tensor);
  }
  torch::NoGradGuard no_grad;
  for (auto& [key, members] : groups) {
    std::vector<torch::Tensor> flat_parts;
    for (const auto& tensor : members) flat_parts.push_back(tensor.reshape({-1}));
    torch::Tensor flat = torch::cat(flat_parts);
    group.broadcast(flat, 0);
    int64_t offset = 0;
    for (auto& tensor : members) {
      tensor.copy_(flat.narrow(0, offset, tensor.numel()).view(tensor.sizes()));
      offset += tensor.numel();
    }
  }
}

void check_reducible(const std::vector<std::shared_ptr<Metric>>& metrics) {
  const ReduceFunction nothing = [](torch::Tensor&, ReduceOp) {};
  for (const auto& metric : metrics) metric->clone()->all_reduce(nothing);
}

void reduce_metrics(distributed::ProcessGroup& group,
                    const std::vector<std::shared_ptr<Metric>>& metrics) {
  const ReduceFunction reduce = group.reduce_function();
  for (const auto& metric : metrics) metric->all_reduce(reduce);
}

}  // namespace trainloop::detail
