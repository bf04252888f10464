#include <fmt/format.h>

#include <csignal>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>

#include "coordinator.h"
#include "gradient_reducer.h"
#include "trainloop/error.h"

namespace trainloop::detail {

namespace {

// Throws `Error` on every rank (so none is left waiting) unless each named
// value is the same on all of them, naming the first that is not, e.g.
// "data_parallel: training batches in epoch 1 differ between ranks: 7 to 8
// (rank 1 has 7)". One collective.

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

// Copies rank 0's parameters and buffers into every rank's, in place (one
// broadcast per dtype and device).
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

// Throws `Error` naming the first metric that cannot be combined across
// ranks (see `Metric::all_reduce`), trying it on fresh copies.
void check_reducible(const std::vector<std::shared_ptr<Metric>>& metrics) {
  const ReduceFunction nothing = [](torch::Tensor&, ReduceOp) {};
  for (const auto& metric : metrics) metric->clone()->all_reduce(nothing);
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

// What travels with the gradients, summed over the ranks: how many have a
// SIGINT pending, and how many a SIGTERM.
constexpr int64_t kControlValues = 2;

std::vector<double> signal_control(int signal) {
  return {signal == SIGINT ? 1.0 : 0.0, signal == SIGTERM ? 1.0 : 0.0};
}

int agreed_signal(const std::vector<double>& summed) {
  if (summed[0] > 0) return SIGINT;
  if (summed[1] > 0) return SIGTERM;
  return 0;
}

class DataParallel final : public Coordinator {
 public:
  DataParallel(std::shared_ptr<distributed::ProcessGroup> group,
               const distributed::DataParallelOptions& options)
      : group_(std::move(group)), options_(options) {}

  const std::shared_ptr<distributed::ProcessGroup>& group() const override { return group_; }
  int64_t rank() const override { return group_->rank(); }
  int64_t world_size() const override { return group_->world_size(); }

  void distribute(const data::DataSource& source, bool pad) override {
    source->shard(rank(), world_size(), pad);
    for (const auto& known : sharded_) {
      if (&*known == &*source) return;
    }
    sharded_.push_back(source);
  }

  void make_whole(const data::DataSource& source) override {
    for (auto known = sharded_.begin(); known != sharded_.end(); ++known) {
      if (&**known == &*source) {
        source->shard(0, 1, false);
        sharded_.erase(known);
        return;
      }
    }
  }

  void make_all_whole() override {
    while (!sharded_.empty()) make_whole(sharded_.back());
  }

  void check_metrics(const std::vector<std::shared_ptr<Metric>>& metrics) override {
    check_reducible(metrics);
  }

  void start_fit(const Model& model, int64_t resumed_step, int64_t resumed_batch) override {
    const std::vector<torch::Tensor> parameters = model.parameters();
    int64_t elements = 0;
    for (const auto& parameter : parameters) elements += parameter.numel();
    // Ranks that resume from different checkpoints, or train different
    // models, would exchange garbage: say so at once, on every rank.
    check_same_on_every_rank(*group_,
                             {{"resumed global steps (-1: a fresh fit)", resumed_step},
                              {"resumed batches (-1: a fresh fit)", resumed_batch},
                              {"model parameter counts", static_cast<int64_t>(parameters.size())},
                              {"model parameter elements", elements}});
    broadcast_model(*group_, model);
    reducer_ = std::make_unique<GradientReducer>(group_, parameters, options_, kControlValues);
    agreed_signal_ = 0;
  }

  // Drops the gradient hooks.
  void end_fit() override { reducer_.reset(); }

  void start_training_pass(int64_t epoch, int64_t batches) override {
    // Each batch is one collective: a rank with fewer would leave the others
    // waiting.
    check_same_on_every_rank(*group_, {{fmt::format("training batches in epoch {}", epoch), batches}});
  }

  // Only the backward before an update is reduced; its hooks start
  // all-reducing while it runs.
  void before_backward(bool fresh, int signal) override {
    reducer_->prepare(fresh, signal_control(signal));
  }

  void after_backward() override { agreed_signal_ = agreed_signal(reducer_->finish()); }

  // What the ranks agreed at this update's gradient reduction, so that every
  // rank stops after the same update.
  int signal_after_update(int /*signal*/) override { return agreed_signal_; }

  int signal_at_epoch_end(int signal) override {
    const std::vector<double> local = signal_control(signal);
    torch::Tensor summed = torch::tensor(local, torch::kDouble);
    group_->all_reduce(summed);
    return agreed_signal({summed[0].item<double>(), summed[1].item<double>()});
  }

  void combine_metrics(const std::vector<std::shared_ptr<Metric>>& metrics) override {
    const ReduceFunction reduce = group_->reduce_function();
    for (const auto& metric : metrics) metric->all_reduce(reduce);
  }

  std::vector<std::string> gather(const std::string& mine) override {
    return gather_bytes(*group_, mine);
  }

  bool any(bool flag) override {
    torch::Tensor value = torch::tensor({flag ? int64_t{1} : int64_t{0}});
    group_->all_reduce(value, ReduceOp::max);
    return value.item<int64_t>() != 0;
  }

 private:
  std::shared_ptr<distributed::ProcessGroup> group_;
  distributed::DataParallelOptions options_;
  std::unique_ptr<GradientReducer> reducer_;
  // The signal the ranks agreed on at the last gradient reduction, or 0.
  int agreed_signal_ = 0;
  // Sources split across the group, made whole again when the loop runs
  // alone or predicts.
  std::vector<data::DataSource> sharded_;
};

}  // namespace

std::unique_ptr<Coordinator> make_data_parallel(std::shared_ptr<distributed::ProcessGroup> group,
                                                const distributed::DataParallelOptions& options) {
  return std::make_unique<DataParallel>(std::move(group), options);
}

}  // namespace trainloop::detail
