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

// The whole text must be a number from `low` to `high`: "2 " or "2x" are as
// wrong as "two", and a number beyond the range (even one beyond int64_t) is
// refused before anything is sized by it.
int64_t bounded_number(const char* name, const std::string& text, int64_t low, int64_t high,
                       const std::string& why = "") {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [at, error] = std::from_chars(text.data(), end, value);
  const std::string expected = fmt::format("{} to {}{}", low, high, why);
  if (text.empty() || error == std::errc::invalid_argument || at != end) {
    throw Error(fmt::format("{} is \"{}\", expected a whole number, {}", name, text, expected));
  }
  if (error != std::errc() || value < low || value > high) {
    throw Error(fmt::format("{} is {}, expected {}", name, text, expected));
  }
  return value;
}

int64_t required_number(const char* name, const char* why, int64_t low, int64_t high) {
  const auto text = variable(name);
  if (!text) throw Error(fmt::format("{} is not set, expected {}", name, why));
  return bounded_number(name, *text, low, high, fmt::format(" ({})", why));
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
  env.world_size = bounded_number("WORLD_SIZE", *world_text, 1, max_world_size, " processes");
  if (!rank_text) {
    // A job of one may leave RANK out; a job of several may not.
    if (env.world_size == 1) return std::nullopt;
    throw Error(fmt::format("WORLD_SIZE is {} but RANK is not set; torchrun sets both",
                            env.world_size));
  }
  env.rank = bounded_number("RANK", *rank_text, 0, env.world_size - 1,
                            fmt::format(" (WORLD_SIZE is {})", env.world_size));
  if (env.world_size == 1) return std::nullopt;

  env.master_addr = variable("MASTER_ADDR").value_or("");
  if (env.master_addr.empty()) {
    throw Error("MASTER_ADDR is not set, expected the host name or address of rank 0");
  }
  env.port = static_cast<int>(
      required_number("MASTER_PORT", "the TCP port rank 0 listens on", 1, 65535));

  // By hand on one machine the local values may be left out: they equal the
  // global ones then.
  const auto local_world_text = variable("LOCAL_WORLD_SIZE");
  env.local_world_size =
      local_world_text ? bounded_number("LOCAL_WORLD_SIZE", *local_world_text, 1, env.world_size,
                                        " (WORLD_SIZE)")
                       : env.world_size;
  const auto local_rank_text = variable("LOCAL_RANK");
  env.local_rank =
      local_rank_text
          ? bounded_number("LOCAL_RANK", *local_rank_text, 0, env.local_world_size - 1,
                           fmt::format(" (LOCAL_WORLD_SIZE is {})", env.local_world_size))
          : env.rank;
  if (env.local_rank >= env.local_world_size) {
    // RANK stood in for LOCAL_RANK, but LOCAL_WORLD_SIZE is smaller.
    throw Error(fmt::format("LOCAL_RANK is not set and RANK {} is not below LOCAL_WORLD_SIZE {}; "
                            "set LOCAL_RANK",
                            env.rank, env.local_world_size));
  }
  return env;
}

std::shared_ptr<ProcessGroup> init(const Options& options) {
  const auto env = read_environment();
  if (!env) return nullptr;
  return std::make_shared<ProcessGroup>(*env, options);
}

}  // namespace trainloop::distributed
