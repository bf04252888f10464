#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <optional>
#include <string>
#include <system_error>

#include "trainloop/distributed.h"
#include "trainloop/error.h"

namespace trainloop::distributed {
namespace {

std::optional<std::string> variable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

// The whole text must be the number: "2 " or "2x" are as wrong as "two".
int64_t whole_number(const char* name, const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [at, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || at != end) {
    throw Error(fmt::format("{} is \"{}\", expected a whole number", name, text));
  }
  return value;
}

int64_t required_number(const char* name, const char* why) {
  const auto text = variable(name);
  if (!text) throw Error(fmt::format("{} is not set, expected {}", name, why));
  return whole_number(name, *text);
}

}  // namespace

std::optional<Environment> read_environment() {
  const auto rank_text = variable("RANK");
  const auto world_text = variable("WORLD_SIZE");
  if (!rank_text && !world_text) return std::nullopt;
  if (!world_text) {
    throw Error(fmt::format("RANK is \"{}\" but WORLD_SIZE is not set; torchrun sets both",
                            *rank_text));
  }
  Environment env;
  env.world_size = whole_number("WORLD_SIZE", *world_text);
  if (env.world_size < 1) {
    throw Error(fmt::format("WORLD_SIZE is {}, expected 1 or more processes", env.world_size));
  }
  if (!rank_text) {
    // A job of one may leave RANK out; a job of several may not.
    if (env.world_size == 1) return std::nullopt;
    throw Error(fmt::format("WORLD_SIZE is {} but RANK is not set; torchrun sets both",
                            env.world_size));
  }
  env.rank = whole_number("RANK", *rank_text);
  if (env.rank < 0 || env.rank >= env.world_size) {
    throw Error(fmt::format("RANK is {}, expected 0 to {} (WORLD_SIZE is {})", env.rank,
                            env.world_size - 1, env.world_size));
  }
  if (env.world_size == 1) return std::nullopt;

  env.master_addr = variable("MASTER_ADDR").value_or("");
  if (env.master_addr.empty()) {
    throw Error("MASTER_ADDR is not set, expected the host name or address of rank 0");
  }
  const int64_t port = required_number("MASTER_PORT", "the TCP port rank 0 listens on");
  if (port < 1 || port > 65535) {
    throw Error(fmt::format("MASTER_PORT is {}, expected a TCP port, 1 to 65535", port));
  }
  env.port = static_cast<int>(port);

  // By hand on one machine the local values may be left out: they equal the
  // global ones then.
  env.local_rank = variable("LOCAL_RANK") ? whole_number("LOCAL_RANK", *variable("LOCAL_RANK"))
                                          : env.rank;
  env.local_world_size = variable("LOCAL_WORLD_SIZE")
                             ? whole_number("LOCAL_WORLD_SIZE", *variable("LOCAL_WORLD_SIZE"))
                             : env.world_size;
  if (env.local_world_size < 1 || env.local_world_size > env.world_size) {
    throw Error(fmt::format("LOCAL_WORLD_SIZE is {}, expected 1 to {} (WORLD_SIZE)",
                            env.local_world_size, env.world_size));
  }
  if (env.local_rank < 0 || env.local_rank >= env.local_world_size) {
    throw Error(fmt::format("LOCAL_RANK is {}, expected 0 to {} (LOCAL_WORLD_SIZE is {})",
                            env.local_rank, env.local_world_size - 1, env.local_world_size));
  }
  return env;
}

std::shared_ptr<ProcessGroup> init(const Options& options) {
  const auto env = read_environment();
  if (!env) return nullptr;
  return std::make_shared<ProcessGroup>(*env, options);
}

}  // namespace trainloop::distributed
