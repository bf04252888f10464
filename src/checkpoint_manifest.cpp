#include "checkpoint_manifest.h"

#include <fmt/format.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <nlohmann/json.hpp>

#include "trainloop/error.h"

namespace trainloop::detail {

using nlohmann::json;

namespace {

// The largest file a checkpoint may hold (model weights included).
constexpr uint64_t kMaxCheckpointFileBytes = uint64_t{1} << 40;

// JSON has no NaN or infinity; metric values may be either.
json number_to_json(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return value;
}

// The manifest's own checksum: the CRC-32 of its canonical text without the
// "checksum" field (nlohmann::json prints an object the same way however it
// was read, so whitespace does not matter and every value does).
std::string manifest_checksum(json manifest) {
  manifest.erase("checksum");
  return fmt::format("crc32:{:08x}", crc32_of(manifest.dump()));
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

[[noreturn]] void bad_field(const std::string& source, const std::string& field,
                            const std::string& expected) {
  throw Error(fmt::format("{}: field \"{}\": expected {}", source, field, expected));
}

// `field` is a view, not a const std::string&: the callers bind the returned
// reference, and a temporary string argument made g++ 14 warn that it might
// dangle (-Wdangling-reference).
const json& member(const json& object, const char* key, const std::string& source,
                   std::string_view field) {
  const auto found = object.find(key);
  if (found == object.end()) throw Error(fmt::format("{}: field \"{}\" is missing", source, field));
  return *found;
}

int64_t non_negative(const json& object, const char* key, const std::string& source,
                     const std::string& prefix = "") {
  const std::string field = prefix + key;
  const json& value = member(object, key, source, field);
  if (!value.is_number_integer() || value.get<int64_t>() < 0) {
    bad_field(source, field, "an integer >= 0");
  }
  return value.get<int64_t>();
}

double metric_number(const json& value, const std::string& source, const std::string& field) {
  if (value.is_number()) return value.get<double>();
  if (value.is_string()) {
    const std::string& text = value.get_ref<const std::string&>();
    if (text == "nan") return NAN;
    if (text == "inf") return INFINITY;
    if (text == "-inf") return -INFINITY;
  }
  bad_field(source, field, "a number, \"nan\", \"inf\" or \"-inf\"");
}

std::vector<std::string> string_list(const json& object, const char* key,
                                     const std::string& source) {
  const json& value = member(object, key, source, key);
  if (!value.is_array()) bad_field(source, key, "an array of strings");
  std::vector<std::string> out;
  for (const auto& item : value) {
    if (!item.is_string()) bad_field(source, key, "an array of strings");
    out.push_back(item.get<std::string>());
  }
  return out;
}

}  // namespace

uint32_t crc32_of(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes at most uInt bytes a call.
  constexpr size_t kChunk = size_t{1} << 30;
  for (size_t at = 0; at < bytes.size(); at += kChunk) {
    const size_t n = std::min(kChunk, bytes.size() - at);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + at), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

std::string manifest_text(const Manifest& manifest) {
  const CheckpointInfo& info = manifest.info;
  json root;
  root["format"] = kCheckpointFormat;
  root["id"] = manifest.id;
  root["created"] = utc_now();
  root["resume"] = {{"epoch", info.resume.epoch}, {"batch", info.resume.batch}};
  root["global_step"] = info.global_step;
  root["epoch_count"] = manifest.epoch_count;
  root["training_batches"] = info.training_batches;
  root["world_size"] = info.world_size;
  json history = json::array();
  for (const auto& epoch : manifest.history) {
    json values = json::object();
    for (const auto& [name, value] : epoch) values[name] = number_to_json(value);
    history.push_back(values);
  }
  root["history"] = history;
  root["metrics"] = manifest.metrics;
  root["callbacks"] = manifest.callbacks;
  root["optimizer_groups"] = manifest.optimizer_groups;
  if (!info.monitor.empty()) {
    root["monitor"] = {{"name", info.monitor},
                       {"value", number_to_json(info.monitor_value.value_or(NAN))}};
  }
  json files = json::object();
  for (const auto& [name, facts] : manifest.files) {
    files[name] = {{"bytes", facts.first}, {"crc32", facts.second}};
  }
  root["files"] = files;
  root["checksum"] = manifest_checksum(root);
  return root.dump(1);
}

Manifest parse_manifest(std::string_view text, const std::string& source) {
  json root;
  try {
    root = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  if (!root.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  const json& format = member(root, "format", source, "format");
  if (!format.is_number_integer()) bad_field(source, "format", "an integer");
  if (format.get<int64_t>() != kCheckpointFormat) {
    throw Error(fmt::format("{}: checkpoint format {}, this build reads {}", source,
                            format.dump(), kCheckpointFormat));
  }
  Manifest manifest;
  const json& id = member(root, "id", source, "id");
  if (!id.is_string() || id.get_ref<const std::string&>().size() != 16 ||
      id.get_ref<const std::string&>().find_first_not_of("0123456789abcdef") != std::string::npos) {
    bad_field(source, "id", "16 hexadecimal digits");
  }
  manifest.id = id.get<std::string>();
  const json& resume = member(root, "resume", source, "resume");
  if (!resume.is_object()) bad_field(source, "resume", "an object");
  manifest.info.resume.epoch = non_negative(resume, "epoch", source, "resume.");
  manifest.info.resume.batch = non_negative(resume, "batch", source, "resume.");
  manifest.info.global_step = non_negative(root, "global_step", source);
  manifest.info.training_batches = non_negative(root, "training_batches", source);
  manifest.epoch_count = non_negative(root, "epoch_count", source);
  // Written by data-parallel fits; older checkpoints are of one process.
  if (root.contains("world_size")) {
    manifest.info.world_size = non_negative(root, "world_size", source);
    if (manifest.info.world_size < 1) bad_field(source, "world_size", "an integer >= 1");
  }
  if (manifest.info.resume.batch > manifest.info.training_batches) {
    throw Error(fmt::format("{}: field \"resume.batch\" is {}, past the {} training batches",
                            source, manifest.info.resume.batch, manifest.info.training_batches));
  }

  const json& history = member(root, "history", source, "history");
  if (!history.is_array()) bad_field(source, "history", "an array of objects");
  for (size_t i = 0; i < history.size(); ++i) {
    const std::string field = fmt::format("history[{}]", i);
    if (!history[i].is_object()) bad_field(source, field, "an object of metric values");
    std::map<std::string, double> values;
    for (const auto& [name, value] : history[i].items()) {
      values[name] = metric_number(value, source, field + "." + name);
    }
    manifest.history.push_back(std::move(values));
  }
  manifest.metrics = string_list(root, "metrics", source);
  manifest.callbacks = string_list(root, "callbacks", source);

  const json& groups = member(root, "optimizer_groups", source, "optimizer_groups");
  if (!groups.is_array()) bad_field(source, "optimizer_groups", "an array of integers");
  for (const auto& group : groups) {
    if (!group.is_number_integer() || group.get<int64_t>() < 0) {
      bad_field(source, "optimizer_groups", "an array of integers >= 0");
    }
    manifest.optimizer_groups.push_back(group.get<int64_t>());
  }

  if (const auto found = root.find("monitor"); found != root.end()) {
    if (!found->is_object()) bad_field(source, "monitor", "an object");
    const json& name = member(*found, "name", source, "monitor.name");
    if (!name.is_string()) bad_field(source, "monitor.name", "a string");
    manifest.info.monitor = name.get<std::string>();
    manifest.info.monitor_value =
        metric_number(member(*found, "value", source, "monitor.value"), source, "monitor.value");
  }

  const json& files = member(root, "files", source, "files");
  if (!files.is_object()) bad_field(source, "files", "an object");
  for (const char* required : {kModelFile, kOptimizerFile, kStateFile}) {
    const std::string field = std::string("files.") + required;
    const json& entry = member(files, required, source, field);
    if (!entry.is_object()) bad_field(source, field, "an object");
    const int64_t bytes = non_negative(entry, "bytes", source, field + ".");
    const int64_t crc = non_negative(entry, "crc32", source, field + ".");
    if (static_cast<uint64_t>(bytes) > kMaxCheckpointFileBytes || crc > 0xffffffffLL) {
      bad_field(source, field, "a size of at most 1 TiB and a 32-bit CRC");
    }
    manifest.files[required] = {static_cast<uint64_t>(bytes), static_cast<uint32_t>(crc)};
  }
  // Last, so every field above is checked (and fuzzed) on its own.
  const json& checksum = member(root, "checksum", source, "checksum");
  if (!checksum.is_string()) bad_field(source, "checksum", "a string \"crc32:<8 hex digits>\"");
  const std::string expected = manifest_checksum(root);
  if (checksum.get_ref<const std::string&>() != expected) {
    throw Error(fmt::format("{}: its checksum {} does not match its contents ({}): the manifest "
                            "was changed after it was written",
                            source, checksum.get_ref<const std::string&>(), expected));
  }
  return manifest;
}

}  // namespace trainloop::detail
