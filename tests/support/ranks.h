#pragma once

// Helpers for the data-parallel tests: a free TCP port on the loopback
// interface, and a job of several ranks run as threads of the test process
// (real c10d process groups over 127.0.0.1). Header-only, for tests alone.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "trainloop/distributed.h"

namespace trainloop::testing_support {

/// A TCP port on 127.0.0.1 that was free a moment ago: the kernel's choice
/// for a socket bound to port 0.
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("free_port: socket() failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof address;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("free_port: bind() failed");
  return ntohs(address.sin_port);
}

/// The environment of rank `rank` of `world_size` on this machine.
inline distributed::Environment local_environment(int64_t rank, int64_t world_size, int port) {
  distributed::Environment env;
  env.rank = env.local_rank = rank;
  env.world_size = env.local_world_size = world_size;
  env.master_addr = "127.0.0.1";
  env.port = port;
  return env;
}

/// Runs `body(group)` in `world_size` threads, each with its own process
/// group of a job on a fresh port, and rethrows the first exception any of
/// them threw once all are done.
inline void run_ranks(int64_t world_size,
                      const std::function<void(std::shared_ptr<distributed::ProcessGroup> group)>& body,
                      std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  const int port = free_port();
  std::vector<std::exception_ptr> failures(static_cast<size_t>(world_size));
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        auto group = std::make_shared<distributed::ProcessGroup>(
            local_environment(rank, world_size, port), distributed::Options().timeout(timeout));
        body(group);
        // No rank tears its group down while another still talks to it.
        group->barrier();
      } catch (...) {
        failures[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
}

}  // namespace trainloop::testing_support
