// Measures data-parallel scaling: LeNet-5 on Fashion-MNIST trained by fit
// in one process with 1 and 2 threads, and in 2 processes of 1 thread each
// (Gloo over 127.0.0.1), in images per second; and what the gradient
// all-reduce costs: the time ranks spent waiting for it (what backward did
// not hide), with and without overlap, and one all-reduce of LeNet's
// gradients alone. A rank's wait is the all-reduce that backward did not hide
// plus the time it waited for the other rank to get there; the table shows
// the less-waiting rank's, and how much more the other waited. (When the
// slower rank changes from step to step, both include waiting for the other:
// the all-reduce alone is then the cost of the communication.) The program starts itself once per run (as a worker,
// the two ranks with torchrun's environment), runs the settings in turn
// `repeats` times (so a change in the machine's load hits all alike), and
// prints a Markdown table of the medians.
//
//   distributed_scaling [--data-dir D] [--images N] [--batch B] [--repeats R]
#include <trainloop/trainloop.h>

#include <CLI/CLI.hpp>
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "lenet.h"

extern char** environ;

namespace tl = trainloop;

namespace {

struct Settings {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int64_t images = 24000;
  int64_t batch = 64;
  int repeats = 3;
  // Worker mode.
  bool worker = false;
  int threads = 1;
  bool overlap = true;
  int64_t bucket_bytes = int64_t{1} << 20;
  bool all_reduce_only = false;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// One worker run: prints "result rank images_per_s fit_s wait_s steps".
int run_worker(const Settings& s) {
  torch::set_num_threads(s.threads);
  auto group = tl::distributed::init(tl::distributed::Options().timeout(std::chrono::seconds(120)));
  torch::manual_seed(1);
  tl::examples::LeNet model;
  if (s.all_reduce_only) {
    if (!group) throw tl::Error("--all-reduce-only needs torchrun's environment");
    // One all-reduce of every gradient (one flat buffer, as one bucket),
    // many times: the cost that overlap can hide.
    int64_t numel = 0;
    for (const auto& p : model->parameters()) numel += p.numel();
    torch::Tensor flat = torch::randn({numel});
    for (int i = 0; i < 20; ++i) group->all_reduce(flat);
    constexpr int kTimes = 300;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kTimes; ++i) group->all_reduce(flat);
    if (group->rank() == 0) std::printf("all_reduce_ms %.4f %lld\n", 1000 * seconds_since(start) / kTimes,
                                        static_cast<long long>(numel));
    return 0;
  }
  auto [train, test] = tl::data::fashion_mnist(s.data_dir);
  const tl::data::TensorDataset data(train.inputs.narrow(0, 0, s.images),
                                     train.targets.narrow(0, 0, s.images));
  const tl::data::TensorDataset warm(train.inputs.narrow(0, 0, 1280),
                                     train.targets.narrow(0, 0, 1280));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  const tl::distributed::DataParallelOptions parallel =
      tl::distributed::DataParallelOptions().overlap(s.overlap).bucket_bytes(s.bucket_bytes);
  // A warm-up epoch first: allocations and thread pools.
  {
    tl::TrainingLoop loop(tl::data::Epochs(warm, s.batch).seed(3), nullptr, optimizer,
                          tl::losses::cross_entropy);
    loop.handle_signals(false).data_parallel(group, parallel);
    loop.fit(model, 1);
  }
  tl::TrainingLoop loop(tl::data::Epochs(data, s.batch).seed(3), nullptr, optimizer,
                        tl::losses::cross_entropy, {tl::metrics::accuracy()});
  loop.handle_signals(false).data_parallel(group, parallel);
  const double waited_before = group ? group->statistics().wait_seconds : 0;
  const auto start = std::chrono::steady_clock::now();
  loop.fit(model, 1);
  const double seconds = seconds_since(start);
  const double waited = group ? group->statistics().wait_seconds - waited_before : 0;
  // The ranks train on their shards in step: the job's images are all of them.
  std::printf("result %lld %.3f %.6f %.6f %lld\n", static_cast<long long>(group ? group->rank() : 0),
              static_cast<double>(s.images) / seconds, seconds, waited,
              static_cast<long long>(loop.state().global_step));
  std::fflush(stdout);
  return 0;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

// Starts `processes` workers (ranks, when more than one) and returns their output.
std::string launch(const std::string& self, int processes, const std::vector<std::string>& extra) {
  const int port = free_port();
  std::vector<pid_t> pids;
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) throw tl::Error("distributed_scaling: pipe() failed");
  for (int rank = 0; rank < processes; ++rank) {
    std::vector<std::string> args{self, "--worker"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<std::string> variables;
    for (char** entry = environ; *entry != nullptr; ++entry) variables.emplace_back(*entry);
    if (processes > 1) {
      for (const auto& [name, value] : std::map<std::string, std::string>{
               {"RANK", std::to_string(rank)}, {"WORLD_SIZE", std::to_string(processes)},
               {"LOCAL_RANK", std::to_string(rank)}, {"LOCAL_WORLD_SIZE", std::to_string(processes)},
               {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}}) {
        variables.push_back(name + "=" + value);
      }
    }
    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& v : variables) envp.push_back(v.data());
    envp.push_back(nullptr);
    const pid_t pid = fork();
    if (pid == 0) {
      dup2(pipe_fds[1], 1);
      close(pipe_fds[0]);
      close(pipe_fds[1]);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    pids.push_back(pid);
  }
  close(pipe_fds[1]);
  std::string output;
  char buffer[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof buffer)) > 0;) output.append(buffer, static_cast<size_t>(n));
  close(pipe_fds[0]);
  for (const pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      throw tl::Error(fmt::format("distributed_scaling: a worker failed (status {})", status));
    }
  }
  return output;
}

struct Result {
  double images_per_s = 0;  // rank 0's
  double seconds = 0;
  double least_wait = 0;  // the smaller of the ranks' waits: communication not hidden
  double most_wait = 0;
  long long steps = 0;
};

Result parse_result(const std::string& output, int processes) {
  Result r;
  int found = 0;
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("result ", 0) != 0) continue;
    std::istringstream in(line.substr(7));
    long long rank = 0;
    double images_per_s = 0, seconds = 0, wait = 0;
    long long steps = 0;
    in >> rank >> images_per_s >> seconds >> wait >> steps;
    if (rank == 0) {
      r.images_per_s = images_per_s;
      r.seconds = seconds;
      r.steps = steps;
    }
    r.least_wait = found == 0 ? wait : std::min(r.least_wait, wait);
    r.most_wait = found == 0 ? wait : std::max(r.most_wait, wait);
    ++found;
  }
  if (found != processes) {
    throw tl::Error(fmt::format("distributed_scaling: {} results from {} workers:\n{}", found,
                                processes, output));
  }
  return r;
}

// The median (by throughput) of a setting's runs.
Result median(std::vector<Result> runs) {
  std::sort(runs.begin(), runs.end(),
            [](const Result& a, const Result& b) { return a.images_per_s < b.images_per_s; });
  return runs[runs.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app("Data-parallel scaling of LeNet-5 on Fashion-MNIST.", "distributed_scaling");
  app.add_option("--data-dir", s.data_dir, "directory of the Fashion-MNIST IDX files")->capture_default_str();
  app.add_option("--images", s.images, "training images per run")->check(CLI::Range(int64_t{2560}, int64_t{60000}))->capture_default_str();
  app.add_option("--batch", s.batch, "batch size of one process")->check(CLI::Range(int64_t{2}, int64_t{4096}))->capture_default_str();
  app.add_option("--repeats", s.repeats, "runs of each setting; the median is shown")->check(CLI::Range(1, 100))->capture_default_str();
  app.add_flag("--worker", s.worker, "(internal) one run");
  app.add_option("--threads", s.threads, "(worker) LibTorch threads");
  app.add_option("--bucket-bytes", s.bucket_bytes, "(worker) gradient bucket size");
  app.add_flag("!--no-overlap", s.overlap, "(worker) all-reduce only after backward");
  app.add_flag("--all-reduce-only", s.all_reduce_only, "(worker) time the all-reduce alone");
  CLI11_PARSE(app, argc, argv);
  try {
    if (s.worker) return run_worker(s);
    const std::string self = argv[0];
    const std::string images = std::to_string(s.images);
    const std::string batch = std::to_string(s.batch);
    const std::string half_batch = std::to_string(s.batch / 2);
    const std::vector<std::string> common{"--data-dir", s.data_dir, "--images", images};

    struct Row {
      std::string name;
      int processes;
      std::vector<std::string> extra;
    };
    const std::vector<Row> rows{
        {"1 process x 1 thread, batch " + batch, 1, {"--threads", "1", "--batch", batch}},
        {"1 process x 2 threads, batch " + batch, 1, {"--threads", "2", "--batch", batch}},
        {"2 processes x 1 thread, batch " + batch + " each", 2, {"--threads", "1", "--batch", batch}},
        {"2 processes x 1 thread, batch " + half_batch + " each (same updates as the first row)", 2,
         {"--threads", "1", "--batch", half_batch}},
        {"2 processes x 1 thread, batch " + batch + " each, no overlap", 2,
         {"--threads", "1", "--batch", batch, "--no-overlap"}},
        {"2 processes x 1 thread, batch " + batch + " each, 16 KiB buckets", 2,
         {"--threads", "1", "--batch", batch, "--bucket-bytes", "16384"}},
    };
    std::printf("LeNet-5 on %lld Fashion-MNIST images (one epoch of fit, after a warm-up epoch), "
                "median of %d runs; nproc %ld\n\n",
                static_cast<long long>(s.images), s.repeats, sysconf(_SC_NPROCESSORS_ONLN));
    std::vector<std::vector<Result>> runs(rows.size());
    std::vector<double> times;  // of one all-reduce alone, in the same rotation
    long long numel = 0;
    for (int repeat = 0; repeat < s.repeats; ++repeat) {
      for (size_t i = 0; i < rows.size(); ++i) {
        std::vector<std::string> extra = common;
        extra.insert(extra.end(), rows[i].extra.begin(), rows[i].extra.end());
        runs[i].push_back(parse_result(launch(self, rows[i].processes, extra), rows[i].processes));
      }
      const std::string alone = launch(self, 2, {"--all-reduce-only", "--threads", "1"});
      const size_t at = alone.find("all_reduce_ms");
      if (at == std::string::npos) throw tl::Error("distributed_scaling: no all-reduce time:\n" + alone);
      double milliseconds = 0;
      std::sscanf(alone.c_str() + at, "all_reduce_ms %lf %lld", &milliseconds, &numel);
      times.push_back(milliseconds);
    }
    std::printf("| setting | images/s | vs 1x1 | steps | blocked in all-reduce, per step | "
                "the other rank blocked longer by, per step | share of step time |\n");
    std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
    double baseline = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const Result r = median(runs[i]);
      if (baseline == 0) baseline = r.images_per_s;
      const bool parallel = rows[i].processes > 1;
      const double steps = static_cast<double>(r.steps);
      const std::string exposed = parallel ? fmt::format("{:.3f} ms", 1000 * r.least_wait / steps) : "-";
      const std::string skew =
          parallel ? fmt::format("{:.3f} ms", 1000 * (r.most_wait - r.least_wait) / steps) : "-";
      const std::string share = parallel ? fmt::format("{:.1f}%", 100 * r.least_wait / r.seconds) : "-";
      std::printf("| %s | %.0f | %.2fx | %lld | %s | %s | %s |\n", rows[i].name.c_str(),
                  r.images_per_s, r.images_per_s / baseline, r.steps, exposed.c_str(), skew.c_str(),
                  share.c_str());
    }
    std::sort(times.begin(), times.end());
    const double milliseconds = times[times.size() / 2];
    std::printf("\nOne all-reduce of LeNet-5's %lld gradient values (%.0f KiB) between 2 processes: "
                "%.3f ms\n", numel, static_cast<double>(numel) * 4 / 1024, milliseconds);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distributed_scaling: %s\n", e.what());
    return 1;
  }
}
