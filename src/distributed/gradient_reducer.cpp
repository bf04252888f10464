#include "gradient_reducer.h"

#include <fmt/format.h>

#include <map>
#include <set>
#include <tuple>
#include <utility>

#include "trainloop/error.h"

namespace trainloop::detail {

GradientReducer::GradientReducer(std::shared_ptr<distributed::ProcessGroup> group,
                                 const std::vector<torch::Tensor>& parameters,
                                 const distributed::DataParallelOptions& options,
                                 int64_t control_size)
    : group_(std::move(group)), options_(options), control_size_(control_size) {
  if (options_.bucket_bytes() < 1) {
    throw Error(fmt::format("data_parallel: bucket_bytes is {}, expected >= 1",
                            options_.bucket_bytes()));
  }
  // Backward computes the last layers' gradients first: buckets in reverse
  // parameter order fill up, and can be sent, earliest. A parameter listed
  // twice (shared by two modules) is reduced once.
  std::set<const void*> seen;
  std::map<std::tuple<torch::ScalarType, std::string>, size_t> open;  // (dtype, device) → bucket
  std::vector<int64_t> bucket_bytes;
  for (auto parameter = parameters.rbegin(); parameter != parameters.rend(); ++parameter) {
    if (!parameter->requires_grad() || !seen.insert(parameter->unsafeGetTensorImpl()).second) continue;
    const auto key = std::make_tuple(parameter->scalar_type(), parameter->device().str());
    const int64_t bytes = parameter->numel() * static_cast<int64_t>(parameter->element_size());
    auto found = open.find(key);
    if (found == open.end() || (bucket_bytes[found->second] > 0 &&
                                bucket_bytes[found->second] + bytes > options_.bucket_bytes())) {
      buckets_.emplace_back();
      bucket_bytes.push_back(0);
      found = open.insert_or_assign(key, buckets_.size() - 1).first;
    }
    Bucket& bucket = buckets_[found->second];
    Slot slot;
    slot.parameter = *parameter;
    slot.bucket = found->second;
    slot.offset = bucket.gradient_numel;
    slot.numel = parameter->numel();
    bucket.gradient_numel += slot.numel;
    bucket.slots.push_back(slots_.size());
    bucket_bytes[found->second] += bytes;
    slots_.push_back(std::move(slot));
  }
  if (buckets_.empty()) buckets_.emplace_back();  // the control values still travel
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = buckets_[b];
    const bool last = b + 1 == buckets_.size();
    const torch::TensorOptions tensor_options =
        bucket.slots.empty() ? torch::TensorOptions().dtype(torch::kFloat).device(group_->device())
                             : slots_[bucket.slots.front()].parameter.options();
    bucket.flat = torch::zeros({bucket.gradient_numel + (last ? control_size_ : 0)},
                               tensor_options.requires_grad(false));
  }
  if (!options_.overlap()) return;
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].hook = slots_[i].parameter.register_hook(
        [this, i](const torch::Tensor& gradient) { on_gradient(i, gradient); });
    slots_[i].hooked = true;
  }
}

GradientReducer::~GradientReducer() {
  for (Slot& slot : slots_) {
    if (!slot.hooked) continue;
    try {
      slot.parameter.remove_hook(slot.hook);
    } catch (...) {
      // A destructor must not throw; the hook then stays, disarmed.
    }
  }
}

torch::Tensor GradientReducer::view(const Slot& slot) {
  return buckets_[slot.bucket].flat.narrow(0, slot.offset, slot.numel);
}

void GradientReducer::prepare(bool fresh, const std::vector<double>& control) {
  if (static_cast<int64_t>(control.size()) != control_size_) {
    throw Error(fmt::format("GradientReducer: {} control values, expected {}", control.size(),
                            control_size_));
  }
  for (Slot& slot : slots_) slot.ready = false;
  for (Bucket& bucket : buckets_) {
    bucket.ready = 0;
    bucket.sent = false;
    bucket.work = distributed::Work();
  }
  next_to_send_ = 0;
  sent_during_backward_ = 0;
  fresh_ = fresh;
  Bucket& last = buckets_.back();
  torch::NoGradGuard no_grad;
  for (int64_t i = 0; i < control_size_; ++i) {
    last.flat[last.gradient_numel + i].fill_(control[static_cast<size_t>(i)]);
  }
  armed_ = options_.overlap();
}

// Runs inside backward, before autograd adds `gradient` to the parameter's
// .grad; on the CPU in the thread that called backward, on a GPU in its one
// device thread, so slots and buckets are never touched concurrently.
void GradientReducer::on_gradient(size_t index, const torch::Tensor& gradient) {
  if (!armed_) return;
  Slot& slot = slots_[index];
  Bucket& bucket = buckets_[slot.bucket];
  if (gradient.is_sparse()) {
    throw Error("data_parallel: a parameter has a sparse gradient; only dense ones are averaged");
  }
  if (bucket.sent) {
    throw Error("data_parallel: a gradient arrived after its bucket was sent (backward ran twice "
                "in one batch?)");
  }
  torch::NoGradGuard no_grad;
  torch::Tensor target = view(slot);
  if (slot.ready) {
    target.add_(gradient.reshape({-1}));
    return;
  }
  target.copy_(gradient.reshape({-1}));
  // Inside an accumulation group, .grad holds the earlier batches' part.
  const torch::Tensor& earlier = slot.parameter.grad();
  if (!fresh_ && earlier.defined()) target.add_(earlier.reshape({-1}));
  slot.ready = true;
  if (++bucket.ready == bucket.slots.size()) send_ready();
}

void GradientReducer::send_ready() {
  while (next_to_send_ < buckets_.size() &&
         buckets_[next_to_send_].ready == buckets_[next_to_send_].slots.size() &&
         !buckets_[next_to_send_].slots.empty()) {
    send(next_to_send_);
    ++sent_during_backward_;
  }
}

void GradientReducer::send(size_t index) {
  Bucket& bucket = buckets_[index];
  bucket.work = group_->all_reduce_async(bucket.flat);
  bucket.sent = true;
  next_to_send_ = index + 1;
}

void GradientReducer::fill_from_grad(Slot& slot) {
  // No hook ran for it (overlap off, or no gradient reached it this
  // backward): .grad holds everything it has.
  torch::Tensor target = view(slot);
  const torch::Tensor& grad = slot.parameter.grad();
  if (grad.defined()) {
    target.copy_(grad.reshape({-1}));
  } else {
    target.zero_();
  }
  slot.ready = true;
}

std::vector<double> GradientReducer::finish() {
  armed_ = false;
  torch::NoGradGuard no_grad;
  // In index order, as every rank does, so the collectives pair up.
  while (next_to_send_ < buckets_.size()) {
    Bucket& bucket = buckets_[next_to_send_];
    for (const size_t slot : bucket.slots) {
      if (!slots_[slot].ready) fill_from_grad(slots_[slot]);
    }
    send(next_to_send_);
  }
  const double world = static_cast<double>(group_->world_size());
  for (Bucket& bucket : buckets_) {
    bucket.work.wait();
    bucket.flat.narrow(0, 0, bucket.gradient_numel).div_(world);
  }
  for (Slot& slot : slots_) {
    torch::Tensor average = view(slot).view(slot.parameter.sizes());
    torch::Tensor& grad = slot.parameter.mutable_grad();
    if (grad.defined()) {
      grad.copy_(average);
    } else {
      grad = average.clone();
    }
  }
  const Bucket& last = buckets_.back();
  const torch::Tensor control =
      last.flat.narrow(0, last.gradient_numel, control_size_).to(torch::kCPU, torch::kDouble);
  return std::vector<double>(control.data_ptr<double>(), control.data_ptr<double>() + control_size_);
}

}  // namespace trainloop::detail
