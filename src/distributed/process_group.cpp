// The one file that sees c10d: the TCPStore rendezvous, the Gloo (and, in
// CUDA builds, NCCL) backends, and their collectives behind the pimpl of
// trainloop/distributed.h. c10d's C++ API changed between LibTorch 1.x and
// 2.x (2.x splits Backend from ProcessGroup), hence the version tests.

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "trainloop/distributed.h"
#include "trainloop/error.h"

#if defined(TRAINLOOP_WITH_GLOO)
// ProcessGroupGloo.hpp is empty unless this is set; LibTorch itself was
// built with Gloo, only the macro is not exported.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <c10/util/Logging.h>
#if defined(TRAINLOOP_WITH_NCCL)
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#endif

namespace trainloop::distributed {

namespace {

// The text of an exception without the C++ backtrace c10::Error carries.
std::string message_of(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return c10_error->what_without_backtrace();
  }
  return e.what();
}

std::string seconds_text(std::chrono::milliseconds timeout) {
  return fmt::format("{:g} s", static_cast<double>(timeout.count()) / 1000.0);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// LibTorch's messages may run over several lines; an Error is one.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// A timeout of more than this is a mistake (an "infinite" one converted to
// milliseconds), and c10d would overflow adding it to the clock.
constexpr std::chrono::milliseconds kLongestTimeout = std::chrono::hours(24 * 365);

// The checks before anything is sized by the world size or waits: an
// Environment may be built by hand, not only by read_environment.
void check_startup(const Environment& env, const Options& options) {
  if (env.world_size < 1 || env.world_size > max_world_size) {
    throw Error(fmt::format("distributed: world size {}, expected 1 to {} processes",
                            env.world_size, max_world_size));
  }
  if (env.rank < 0 || env.rank >= env.world_size) {
    throw Error(fmt::format("distributed: rank {} of {}, expected a rank from 0 to {}", env.rank,
                            env.world_size, env.world_size - 1));
  }
  if (env.port < 1 || env.port > 65535) {
    throw Error(fmt::format("distributed: port {} (MASTER_PORT), expected 1 to 65535", env.port));
  }
  if (options.timeout().count() <= 0 || options.timeout() > kLongestTimeout) {
    throw Error(fmt::format("distributed: timeout {} ms, expected a positive time of at most "
                            "365 days",
                            options.timeout().count()));
  }
}

}  // namespace

#if defined(TRAINLOOP_WITH_GLOO)

#if TORCH_VERSION_MAJOR >= 2
// 2.x: the backends are c10d::Backend; ProcessGroup dispatches to them.
using BackendHandle = c10::intrusive_ptr<c10d::Backend>;
#else
using BackendHandle = c10::intrusive_ptr<c10d::ProcessGroup>;
#endif

struct ProcessGroup::Impl {
  Environment environment;
  Options options;
  torch::Device device = torch::kCPU;
  std::string backend_name;
  c10::intrusive_ptr<c10d::Store> store;
  BackendHandle backend;
  mutable std::mutex statistics_mutex;
  Statistics statistics;

  // An Error naming this rank, the operation and what went wrong.
  [[noreturn]] void fail(const std::string& operation, const std::string& message) const {
    throw Error(fmt::format(
        "distributed: {} failed on rank {} of {}: a rank exited, or did not take part within "
        "the timeout of {}: {}",
        operation, environment.rank, environment.world_size, seconds_text(options.timeout()),
        message));
  }

  void add_wait(std::chrono::steady_clock::duration waited) {
    std::lock_guard<std::mutex> lock(statistics_mutex);
    statistics.wait_seconds += std::chrono::duration<double>(waited).count();
  }

  // The backend takes tensors on its device only, contiguous.
  torch::Tensor staged(const torch::Tensor& tensor) const {
    if (tensor.device() == device && tensor.is_contiguous()) return tensor;
    return tensor.to(device).contiguous();
  }

  // Waits for `work` and copies the result back when the tensor was staged.
  void finish(const c10::intrusive_ptr<c10d::Work>& work, const std::string& operation,
              torch::Tensor& target, const torch::Tensor& sent) {
    const auto started = std::chrono::steady_clock::now();
    try {
      work->wait(options.timeout());
    } catch (const std::exception& e) {
      add_wait(std::chrono::steady_clock::now() - started);
      fail(operation, message_of(e));
    }
    add_wait(std::chrono::steady_clock::now() - started);
    if (!sent.is_same(target)) target.copy_(sent);
  }

  template <class Start>
  c10::intrusive_ptr<c10d::Work> start(const std::string& operation, Start&& start_work) {
    try {
      return start_work();
    } catch (const std::exception& e) {
      fail(operation, message_of(e));
    }
  }
};

struct Work::Impl {
  ProcessGroup::Impl* group = nullptr;
  c10::intrusive_ptr<c10d::Work> work;
  torch::Tensor target;
  torch::Tensor sent;
};

Work::Work() = default;
Work::~Work() = default;
Work::Work(Work&&) noexcept = default;
Work& Work::operator=(Work&&) noexcept = default;

bool Work::pending() const { return impl_ != nullptr; }

void Work::wait() {
  if (!impl_) return;
  // Detached first: a failed wait is not retried.
  const std::unique_ptr<Impl> impl = std::move(impl_);
  impl->group->finish(impl->work, "all_reduce", impl->target, impl->sent);
}

namespace {

// Sets TCPStoreOptions::useLibUV where this LibTorch has it (2.2+); false
// where it has none.
template <class StoreOptions>
auto use_libuv(StoreOptions& store_options, bool use, int) -> decltype(store_options.useLibUV = use, true) {
  store_options.useLibUV = use;
  return true;
}
template <class StoreOptions>
bool use_libuv(StoreOptions&, bool, long) {
  return false;
}
template <class StoreOptions>
bool use_libuv(StoreOptions& store_options, bool use) {
  return use_libuv(store_options, use, 0);
}

c10::intrusive_ptr<c10d::Store> make_store(const Environment& env, const Options& options) {
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env.port);
  store_options.isServer = env.rank == 0;
  store_options.numWorkers = static_cast<size_t>(env.world_size);
  // The backend's own rendezvous waits for every rank, within one timeout.
  store_options.waitWorkers = false;
  store_options.timeout = options.timeout();
  try {
    try {
      return c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    } catch (const std::exception& e) {
      // LibTorch 2.4+ asks for the libuv store by default, and a build
      // without libuv (Debian's) refuses instead of falling back.
      if (message_of(e).find("libuv") == std::string::npos || !use_libuv(store_options, false)) throw;
      return c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    }
  } catch (const std::exception& e) {
    if (env.rank == 0) {
      throw Error(fmt::format(
          "distributed: rank 0 of {} could not serve the rendezvous at {}:{} (MASTER_ADDR, "
          "MASTER_PORT): {}",
          env.world_size, env.master_addr, env.port, message_of(e)));
    }
    throw Error(fmt::format(
        "distributed: rank {} of {} could not reach rank 0 at {}:{} (MASTER_ADDR, MASTER_PORT) "
        "within {}: {}",
        env.rank, env.world_size, env.master_addr, env.port, seconds_text(options.timeout()),
        message_of(e)));
  }
}

// LibTorch's own lines during start-up (glog's "Logging before
// InitGoogleLogging()", TCPStore's retries and timeouts, Gloo's warnings)
// say less than the one Error that follows them, and would come before it:
// held back, process-wide, while any group starts. Counted, because ranks
// may start as threads of one process; the last one out restores the
// levels. Messages of other threads at those levels are held back too,
// only during start-up. FATAL ones still print (they abort).
class QuietLibTorchLogs {
 public:
  QuietLibTorchLogs() {
    std::lock_guard<std::mutex> lock(mutex());
    if (users()++ > 0) return;
    saved_c10_level() = FLAGS_caffe2_log_level;  // c10's own logger, and c10d's in 2.x
    FLAGS_caffe2_log_level = std::max(saved_c10_level(), kFatal);
#if defined(C10_USE_GLOG)
    saved_glog_level() = FLAGS_minloglevel;  // glog's, where LibTorch logs through it
    FLAGS_minloglevel = std::max(saved_glog_level(), kFatal);
#endif
  }
  ~QuietLibTorchLogs() {
    std::lock_guard<std::mutex> lock(mutex());
    if (--users() > 0) return;
    FLAGS_caffe2_log_level = saved_c10_level();
#if defined(C10_USE_GLOG)
    FLAGS_minloglevel = saved_glog_level();
#endif
  }
  QuietLibTorchLogs(const QuietLibTorchLogs&) = delete;
  QuietLibTorchLogs& operator=(const QuietLibTorchLogs&) = delete;

 private:
  static constexpr int kFatal = 3;  // glog's and c10's FATAL
  static std::mutex& mutex() {
    static std::mutex instance;
    return instance;
  }
  static int& users() {
    static int count = 0;
    return count;
  }
  static int& saved_c10_level() {
    static int level = 0;
    return level;
  }
  static int& saved_glog_level() {
    static int level = 0;
    return level;
  }
};

// What is left of the start-up's timeout: the store connection, the wait
// for every rank and the backend's connections share one.
class Deadline {
 public:
  explicit Deadline(std::chrono::milliseconds timeout)
      : start_(std::chrono::steady_clock::now()), timeout_(timeout) {}
  std::chrono::milliseconds remaining() const {
    const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start_);
    return spent >= timeout_ ? std::chrono::milliseconds(0) : timeout_ - spent;
  }

 private:
  std::chrono::steady_clock::time_point start_;
  std::chrono::milliseconds timeout_;
};

// The keys of trainloop's own rendezvous in the TCPStore (Gloo's are
// prefixed by a number: no clash).
const char* const kWorldSizeKey = "trainloop/start/world_size";
const char* const kJoinedKey = "trainloop/start/joined";
const char* const kVerdictKey = "trainloop/start/verdict";
const char* const kAllJoined = "all joined";

std::vector<uint8_t> bytes_of(const std::string& text) { return {text.begin(), text.end()}; }
std::string text_of(const std::vector<uint8_t>& bytes) { return {bytes.begin(), bytes.end()}; }

std::string where(const Environment& env) {
  return fmt::format("{}:{} (MASTER_ADDR:MASTER_PORT)", env.master_addr, env.port);
}

// The first verdict stands: a later one (a mismatch found after all joined)
// changes nothing for the ranks already on their way. Set once more by its
// giver: compareSet does not wake the waiting ranks (LibTorch 1.13's
// TCPStore), set does.
void give_verdict(c10d::Store& store, const std::string& verdict) {
  const std::string standing = text_of(store.compareSet(kVerdictKey, {}, bytes_of(verdict)));
  if (standing == verdict) store.set(kVerdictKey, bytes_of(verdict));
}

// The first rank to arrive publishes its WORLD_SIZE; every later one
// compares its own. A mismatch is the verdict for all, naming both values
// (else Gloo fails later with an `enforce fail … 136 vs 272` that claims a
// timeout).
void compare_world_size(c10d::Store& store, const Environment& env) {
  const std::string mine = std::to_string(env.world_size);
  const std::string first = text_of(store.compareSet(kWorldSizeKey, {}, bytes_of(mine)));
  if (first == mine) return;
  const std::string verdict = fmt::format(
      "ranks were started with different WORLD_SIZE: {} and {} (rank {}); give every rank the "
      "same WORLD_SIZE",
      first, mine, env.rank);
  give_verdict(store, verdict);
  throw Error(fmt::format("distributed: rank {} of {}: {}", env.rank, env.world_size, verdict));
}

// How many ranks have joined so far; nothing when the store is gone.
std::optional<int64_t> joined_so_far(c10d::Store& store) {
  try {
    return store.add(kJoinedKey, 0);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// Counts this rank in and waits, within what is left of the timeout, for
// the verdict: every rank joined (given by the last to join), or a mismatch.
void wait_for_every_rank(c10d::Store& store, const Environment& env, const Deadline& deadline,
                         const Options& options) {
  const int64_t joined = store.add(kJoinedKey, 1);
  if (joined == env.world_size) give_verdict(store, kAllJoined);
  if (joined > env.world_size) {
    const std::string verdict = fmt::format(
        "{} processes joined the rendezvous at {}, more than WORLD_SIZE {} (a RANK given twice, "
        "or another job on the same MASTER_PORT?)",
        joined, where(env), env.world_size);
    give_verdict(store, verdict);
    throw Error(fmt::format("distributed: rank {} of {}: {}", env.rank, env.world_size, verdict));
  }
  try {
    // At least 1 ms: c10d reads a zero timeout as none.
    store.wait({kVerdictKey}, std::max(deadline.remaining(), std::chrono::milliseconds(1)));
  } catch (const std::exception& e) {
    const auto count = joined_so_far(store);
    if (!count) {
      throw Error(fmt::format(
          "distributed: rank {} of {} lost the rendezvous at {} while waiting for every rank "
          "(rank 0 exited?): {}",
          env.rank, env.world_size, where(env), first_line(message_of(e))));
    }
    throw Error(fmt::format(
        "distributed: rank {} of {} waited {} (the timeout) for every rank at {}: {} of {} "
        "joined; did all {} start, with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE?",
        env.rank, env.world_size, seconds_text(options.timeout()), where(env), *count,
        env.world_size, env.world_size));
  }
  const std::string verdict = text_of(store.get(kVerdictKey));
  if (verdict != kAllJoined) {
    throw Error(fmt::format("distributed: rank {} of {}: {}", env.rank, env.world_size, verdict));
  }
}

// trainloop's rendezvous before the backend's: Gloo's would spin (and size
// its pairs) for ranks that never come, and name a mismatch of WORLD_SIZE
// as a timeout.
void rendezvous(c10d::Store& store, const Environment& env, const Deadline& deadline,
                const Options& options) {
  try {
    compare_world_size(store, env);
    wait_for_every_rank(store, env, deadline, options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("distributed: rank {} of {} lost the rendezvous at {}: {}", env.rank,
                            env.world_size, where(env), first_line(message_of(e))));
  }
}

BackendHandle make_gloo(const c10::intrusive_ptr<c10d::Store>& store, const Environment& env,
                        const Options& options) {
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout());
  // As torch.distributed does: an interface named by GLOO_SOCKET_IFNAME;
  // on one machine (a loopback master) the loopback address; otherwise the
  // address this host's name resolves to.
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"); interface && *interface) {
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
  } else if (is_loopback(env.master_addr)) {
    gloo_options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
  } else {
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(env.rank),
                                                      static_cast<int>(env.world_size),
                                                      gloo_options);
}

bool nccl_available() {
#if defined(TRAINLOOP_WITH_NCCL)
  return torch::cuda::is_available();
#else
  return false;
#endif
}

}  // namespace

ProcessGroup::ProcessGroup(const Environment& environment, const Options& options)
    : impl_(std::make_unique<Impl>()) {
  check_startup(environment, options);
  impl_->environment = environment;
  impl_->options = options;
  const Environment& env = environment;
  Backend backend = options.backend();
  if (backend == Backend::automatic) backend = nccl_available() ? Backend::nccl : Backend::gloo;
  if (backend == Backend::nccl && !nccl_available()) {
    throw Error(
        "distributed: NCCL asked for, but this trainloop was built without CUDA or no GPU is "
        "visible; use Backend::gloo");
  }
  const QuietLibTorchLogs quiet;
  const Deadline deadline(options.timeout());
  // Kept here until start-up succeeds: a failed one closes it while the
  // logs are still quiet.
  c10::intrusive_ptr<c10d::Store> store = make_store(env, options);
  rendezvous(*store, env, deadline, options);
  impl_->backend_name = backend == Backend::gloo ? "gloo" : "nccl";
  try {
    if (backend == Backend::gloo) {
      impl_->backend = make_gloo(store, env, options);
    } else {
#if defined(TRAINLOOP_WITH_NCCL)
      impl_->device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = options.timeout();
      impl_->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          store, static_cast<int>(env.rank), static_cast<int>(env.world_size), nccl_options);
#endif
    }
  } catch (const std::exception& e) {
    throw Error(fmt::format("distributed: rank {} of {} could not connect to every other rank "
                            "({}) within {} (did all {} start, with the same MASTER_ADDR and "
                            "MASTER_PORT?): {}",
                            env.rank, env.world_size, impl_->backend_name,
                            seconds_text(options.timeout()), env.world_size,
                            first_line(message_of(e))));
  }
  impl_->store = std::move(store);
}

ProcessGroup::~ProcessGroup() = default;

int64_t ProcessGroup::rank() const { return impl_->environment.rank; }
int64_t ProcessGroup::world_size() const { return impl_->environment.world_size; }
const Environment& ProcessGroup::environment() const { return impl_->environment; }
torch::Device ProcessGroup::device() const { return impl_->device; }
std::string ProcessGroup::backend_name() const { return impl_->backend_name; }
std::chrono::milliseconds ProcessGroup::timeout() const { return impl_->options.timeout(); }

void ProcessGroup::all_reduce(torch::Tensor& tensor, ReduceOp op) {
  if (!tensor.defined()) throw Error("distributed: all_reduce of an undefined tensor");
  std::vector<torch::Tensor> tensors{impl_->staged(tensor)};
  c10d::AllreduceOptions options;
  options.reduceOp = op == ReduceOp::max ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
  options.timeout = impl_->options.timeout();
  {
    std::lock_guard<std::mutex> lock(impl_->statistics_mutex);
    ++impl_->statistics.all_reduces;
    impl_->statistics.bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  }
  const auto work = impl_->start("all_reduce", [&] { return impl_->backend->allreduce(tensors, options); });
  impl_->finish(work, "all_reduce", tensor, tensors[0]);
}

Work ProcessGroup::all_reduce_async(torch::Tensor tensor) {
  if (!tensor.defined()) throw Error("distributed: all_reduce of an undefined tensor");
  Work handle;
  handle.impl_ = std::make_unique<Work::Impl>();
  handle.impl_->group = impl_.get();
  handle.impl_->target = tensor;
  handle.impl_->sent = impl_->staged(tensor);
  std::vector<torch::Tensor> tensors{handle.impl_->sent};
  c10d::AllreduceOptions options;
  options.timeout = impl_->options.timeout();
  {
    std::lock_guard<std::mutex> lock(impl_->statistics_mutex);
    ++impl_->statistics.all_reduces;
    impl_->statistics.bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  }
  handle.impl_->work =
      impl_->start("all_reduce", [&] { return impl_->backend->allreduce(tensors, options); });
  return handle;
}

std::vector<torch::Tensor> ProcessGroup::all_gather(const torch::Tensor& tensor) {
  if (!tensor.defined()) throw Error("distributed: all_gather of an undefined tensor");
  std::vector<torch::Tensor> inputs{impl_->staged(tensor)};
  std::vector<std::vector<torch::Tensor>> outputs(1);
  for (int64_t r = 0; r < world_size(); ++r) outputs[0].push_back(torch::empty_like(inputs[0]));
  c10d::AllgatherOptions options;
  options.timeout = impl_->options.timeout();
  const auto work = impl_->start(
      "all_gather", [&] { return impl_->backend->allgather(outputs, inputs, options); });
  torch::Tensor none;
  impl_->finish(work, "all_gather", none, none);
  return outputs[0];
}

void ProcessGroup::broadcast(torch::Tensor& tensor, int64_t root) {
  if (!tensor.defined()) throw Error("distributed: broadcast of an undefined tensor");
  if (root < 0 || root >= world_size()) {
    throw Error(fmt::format("distributed: broadcast from rank {}, expected 0 to {}", root,
                            world_size() - 1));
  }
  std::vector<torch::Tensor> tensors{impl_->staged(tensor)};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  options.timeout = impl_->options.timeout();
  const auto work =
      impl_->start("broadcast", [&] { return impl_->backend->broadcast(tensors, options); });
  impl_->finish(work, "broadcast", tensor, tensors[0]);
}

void ProcessGroup::barrier() {
  c10d::BarrierOptions options;
  options.timeout = impl_->options.timeout();
  const auto work = impl_->start("barrier", [&] { return impl_->backend->barrier(options); });
  torch::Tensor none;
  impl_->finish(work, "barrier", none, none);
}

ReduceFunction ProcessGroup::reduce_function() {
  return [this](torch::Tensor& tensor, ReduceOp op) { all_reduce(tensor, op); };
}

Statistics ProcessGroup::statistics() const {
  std::lock_guard<std::mutex> lock(impl_->statistics_mutex);
  return impl_->statistics;
}

#else  // !TRAINLOOP_WITH_GLOO

// Built without Gloo's headers: one process trains as always, and a job of
// several says what is missing.
struct ProcessGroup::Impl {
  Environment environment;
};
struct Work::Impl {};

Work::Work() = default;
Work::~Work() = default;
Work::Work(Work&&) noexcept = default;
Work& Work::operator=(Work&&) noexcept = default;
bool Work::pending() const { return false; }
void Work::wait() {}

ProcessGroup::ProcessGroup(const Environment& environment, const Options& /*options*/) {
  throw Error(fmt::format("distributed: rank {} of {}: this trainloop was built without Gloo "
                          "(install libgloo-dev and rebuild) and cannot train data-parallel",
                          environment.rank, environment.world_size));
}
ProcessGroup::~ProcessGroup() = default;
int64_t ProcessGroup::rank() const { return impl_->environment.rank; }
int64_t ProcessGroup::world_size() const { return impl_->environment.world_size; }
const Environment& ProcessGroup::environment() const { return impl_->environment; }
torch::Device ProcessGroup::device() const { return torch::kCPU; }
std::string ProcessGroup::backend_name() const { return ""; }
std::chrono::milliseconds ProcessGroup::timeout() const { return {}; }
void ProcessGroup::all_reduce(torch::Tensor&, ReduceOp) {}
Work ProcessGroup::all_reduce_async(torch::Tensor) { return Work(); }
std::vector<torch::Tensor> ProcessGroup::all_gather(const torch::Tensor& tensor) { return {tensor}; }
void ProcessGroup::broadcast(torch::Tensor&, int64_t) {}
void ProcessGroup::barrier() {}
ReduceFunction ProcessGroup::reduce_function() { return [](torch::Tensor&, ReduceOp) {}; }
Statistics ProcessGroup::statistics() const { return {}; }

#endif

}  // namespace trainloop::distributed
