#pragma once

// Data-parallel training over PyTorch's own engine: c10d process groups
// (Gloo on CPU, NCCL on GPUs) in processes started by torchrun. No c10d
// type appears here; they live in src/distributed/process_group.cpp.

#include <torch/arg.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainloop/export.h"
#include "trainloop/reduce_op.h"

namespace trainloop::distributed {

/// The collective backend of a process group.
enum class Backend {
  automatic,  ///< NCCL when this build has it and CUDA is available, else Gloo
  gloo,       ///< tensors on the CPU, over TCP
  nccl,       ///< CUDA tensors, one GPU per process (builds against a CUDA LibTorch only)
};

/// The most processes a job may have (WORLD_SIZE). c10d's largest jobs run
/// tens of thousands of ranks (NCCL); Gloo's own rendezvous already takes
/// minutes at a few thousand (pytorch/gloo#408). Everything sized by the
/// world size (a Gloo pair per peer, `all_gather`'s outputs, the TCPStore's
/// connections) stays small below this bound, and a mistyped WORLD_SIZE
/// (say 99999999999) fails at once instead of allocating gigabytes.
inline constexpr int64_t max_world_size = 65536;

/// Where this process stands in a job of several, as `torchrun` describes it
/// in environment variables.
struct Environment {
  /// RANK: this process's index among all, 0 to world_size - 1.
  int64_t rank = 0;
  /// WORLD_SIZE: how many processes the job has.
  int64_t world_size = 1;
  /// LOCAL_RANK and LOCAL_WORLD_SIZE: the same on this machine (default
  /// RANK and WORLD_SIZE: every process on one machine).
  int64_t local_rank = 0;
  int64_t local_world_size = 1;
  /// MASTER_ADDR and MASTER_PORT: where rank 0 serves the rendezvous store.
  std::string master_addr;
  int port = 0;
};

/// Reads torchrun's environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
/// LOCAL_RANK and LOCAL_WORLD_SIZE. Returns nothing for a process on its own:
/// neither RANK nor WORLD_SIZE set, or WORLD_SIZE 1 (with RANK 0 or unset).
/// Throws `Error` naming the variable, what it holds and what was expected
/// for a missing, out-of-range or inconsistent one, e.g.
/// `RANK is 2, expected 0 to 1 (WORLD_SIZE is 2)` or
/// `WORLD_SIZE is 99999999999, expected 1 to 65536 processes`.
TRAINLOOP_API std::optional<Environment> read_environment();

/// Settings for `init` and `ProcessGroup`.
/// Example: `distributed::Options().timeout(std::chrono::seconds(30))`
struct Options {
  Options() = default;
  /// How long the whole start-up may take (reaching the master, every rank
  /// joining, the backend's connections: one timeout for all), and how long
  /// each collective may (default 5 minutes, at most 365 days); past it,
  /// `Error`. It bounds what a rank waits while rank 0 writes a checkpoint,
  /// too.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(5);
  /// Gloo, NCCL, or the best this build and machine have (default).
  TORCH_ARG(Backend, backend) = Backend::automatic;
};

/// What a process group's collectives have cost this process so far.
struct Statistics {
  /// All-reduces started, and the bytes they carried.
  int64_t all_reduces = 0;
  int64_t bytes = 0;
  /// Seconds spent blocked in collectives or waiting for asynchronous ones:
  /// the communication time that computation did not hide.
  double wait_seconds = 0;
};

class ProcessGroup;

/// An all-reduce in flight, from `ProcessGroup::all_reduce_async`.
class TRAINLOOP_API Work {
 public:
  Work();
  ~Work();
  Work(Work&&) noexcept;
  Work& operator=(Work&&) noexcept;

  /// Blocks until the all-reduce is done; the tensor given to
  /// `all_reduce_async` then holds the sum. Throws `Error` when it failed (a
  /// peer exited or did not answer within the group's timeout). Does nothing
  /// the second time or for an empty `Work`.
  void wait();
  /// Whether an all-reduce is attached and not yet waited for.
  bool pending() const;

 private:
  friend class ProcessGroup;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// The processes of one job joined in a c10d process group: Gloo over TCP,
/// or NCCL between GPUs. Every process must call the same collectives in the
/// same order with tensors of the same shapes and dtypes; a collective that
/// cannot complete — a peer exited, or did not take part within the timeout —
/// throws `Error` naming this rank and the operation instead of hanging.
/// Tensors may live on any device; they are staged to `device()` as needed.
class TRAINLOOP_API ProcessGroup {
 public:
  /// Joins the group that `environment` describes: rank 0 serves a TCPStore
  /// at MASTER_ADDR:MASTER_PORT, the others connect to it, and the backend
  /// connects every pair. Throws `Error` within `options.timeout()` when the
  /// master cannot be reached or a rank never arrives (saying how many of
  /// how many joined), and at once when ranks were started with different
  /// world sizes (naming both). LibTorch's own log lines are held back
  /// meanwhile, so a failed start-up prints only that one `Error`.
  ProcessGroup(const Environment& environment, const Options& options = {});
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  /// This process's rank, 0 to `world_size() - 1`.
  int64_t rank() const;
  /// How many processes the group has.
  int64_t world_size() const;
  /// The environment the group was made from.
  const Environment& environment() const;
  /// The device a process of this group trains on: the CPU for Gloo,
  /// `cuda:LOCAL_RANK` for NCCL.
  torch::Device device() const;
  /// "gloo" or "nccl".
  std::string backend_name() const;
  /// The timeout of every wait (see `Options::timeout`).
  std::chrono::milliseconds timeout() const;

  /// Combines `tensor` element-wise across all ranks, in place, and waits.
  void all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::sum);
  /// Starts summing `tensor` (contiguous) across all ranks, in place, and
  /// returns at once; the sum is there after `Work::wait`.
  Work all_reduce_async(torch::Tensor tensor);
  /// Every rank's `tensor` (each of the same shape and dtype), in rank
  /// order, on every rank.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& tensor);
  /// Copies rank `root`'s `tensor` into every rank's, in place.
  void broadcast(torch::Tensor& tensor, int64_t root = 0);
  /// Waits until every rank has called `barrier`.
  void barrier();
  /// `all_reduce` as a `ReduceFunction`, e.g. for `Metric::all_reduce`.
  ReduceFunction reduce_function();

  /// The cost of the collectives so far.
  Statistics statistics() const;

 private:
  friend class Work;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Joins the job that `torchrun` (or a launcher setting the same variables,
/// see `read_environment`) started this process in, and returns its group;
/// returns null for a process on its own, which then trains as always.
/// Call it once per process, before building the model, e.g.
///   auto group = distributed::init();   // null without torchrun
///   loop.data_parallel(group);
/// Throws `Error` as `read_environment` and `ProcessGroup` do.
TRAINLOOP_API std::shared_ptr<ProcessGroup> init(const Options& options = {});

/// Settings for `TrainingLoop::data_parallel`.
/// Example: `distributed::DataParallelOptions().bucket_bytes(4 << 20)`
struct DataParallelOptions {
  DataParallelOptions() = default;
  /// Gradients are flattened into buckets of about this many bytes, one
  /// all-reduce each (default 1 MiB; a parameter larger than that gets a
  /// bucket of its own).
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{1} << 20;
  /// Whether each bucket's all-reduce starts during backward as soon as its
  /// last gradient is computed, overlapping communication with the rest of
  /// backward (default true), or all start after backward.
  TORCH_ARG(bool, overlap) = true;
};

}  // namespace trainloop::distributed
