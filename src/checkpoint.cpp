#include "trainloop/checkpoint.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <random>
#include <regex>
#include <tuple>

#include "checkpoint_directory.h"
#include "error_text.h"
#include "io/files.h"
#include "io/zip_check.h"
#include "trainloop/error.h"

namespace trainloop {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifest = "manifest.json";
// A manifest holds a few numbers per epoch; anything this large is not one.
constexpr size_t kMaxManifestBytes = size_t{64} << 20;

// The position in a checkpoint directory's name, when it has the name
// `callbacks::checkpoint` gives (see checkpoint_names).
std::optional<ResumePoint> named_position(const std::string& name) {
  static const std::regex pattern("epoch([0-9]{4,18})-batch([0-9]{6,18})");
  std::smatch match;
  if (!std::regex_match(name, match, pattern)) return std::nullopt;
  return ResumePoint{std::stoll(match[1]), std::stoll(match[2])};
}

// Writes a file inside the private temporary directory and syncs it.
void write_synced(const fs::path& path, std::string_view bytes) {
  io::write_atomically(path.string(), bytes, /*durable=*/true);
}

}  // namespace

std::string checkpoint_name(ResumePoint resume) {
  return fmt::format("epoch{:04}-batch{:06}", resume.epoch, resume.batch);
}

std::vector<std::string> checkpoint_names(const std::string& directory) {
  std::vector<std::pair<ResumePoint, std::string>> found;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    const auto point = named_position(name);
    if (!point || !entry.is_directory(error)) continue;
    found.emplace_back(*point, name);
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
    return std::tie(a.first.epoch, a.first.batch) < std::tie(b.first.epoch, b.first.batch);
  });
  std::vector<std::string> names;
  for (auto& [point, name] : found) names.push_back(std::move(name));
  return names;
}

CheckpointInfo verify_checkpoint(const std::string& path) {
  return detail::read_checkpoint(path).manifest.info;
}

namespace detail {

// A checkpoint's identity, in its manifest and its state.pt, so parts of
// different checkpoints cannot be mixed unnoticed. From the operating
// system, not from torch's generators, whose state is part of the fit.
std::string new_checkpoint_id() {
  std::random_device device;
  return fmt::format("{:08x}{:08x}", device(), device());
}

void write_identity(torch::serialize::OutputArchive& state, const std::string& id,
                    ResumePoint resume, int64_t global_step) {
  torch::serialize::OutputArchive identity;
  identity.write("id", c10::IValue(id));
  identity.write("position", torch::tensor({resume.epoch, resume.batch, global_step}));
  state.write("identity", identity);
}

void write_checkpoint(const std::string& path, Manifest manifest,
                      const std::map<std::string, std::string>& files) {
  manifest.files.clear();
  for (const auto& [file, bytes] : files) manifest.files[file] = {bytes.size(), crc32_of(bytes)};
  const std::string text = manifest_text(manifest);

  const fs::path target(path);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string name = target.filename().string();
  const fs::path temporary = parent / fmt::format(".tmp-{}-{}", name, getpid());
  std::error_code error;
  fs::create_directories(parent, error);
  if (error) throw Error(fmt::format("{}: cannot create directory: {}", parent.string(), error.message()));
  fs::remove_all(temporary, error);
  if (!fs::create_directory(temporary, error) || error) {
    throw Error(fmt::format("{}: cannot create directory: {}", temporary.string(),
                            error ? error.message() : "it exists"));
  }
  try {
    for (const auto& [file, bytes] : files) write_synced(temporary / file, bytes);
    // The manifest last: a directory with one is complete.
    write_synced(temporary / kManifest, text);
    io::sync_path(temporary.string());
    if (fs::exists(target)) {
      // rename() cannot replace a non-empty directory: move the old one aside
      // first. A crash in between loses only this (older) checkpoint.
      const fs::path old = parent / fmt::format(".old-{}-{}", name, getpid());
      fs::remove_all(old);
      fs::rename(target, old);
      fs::rename(temporary, target);
      fs::remove_all(old);
    } else {
      fs::rename(temporary, target);
    }
    io::sync_path(parent.string());
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temporary, error);
    throw Error(fmt::format("{}: cannot write the checkpoint: {}", path, e.code().message()));
  } catch (...) {
    fs::remove_all(temporary, error);
    throw;
  }
}

namespace {

// The directory's name, the manifest and state.pt must tell of one
// checkpoint: parts copied from different ones make it invalid.
void check_name(const Manifest& manifest, const std::string& path) {
  const ResumePoint resume = manifest.info.resume;
  const std::string name = fs::path(path).filename().string();
  if (const auto named = named_position(name);
      named && (named->epoch != resume.epoch || named->batch != resume.batch)) {
    throw Error(fmt::format("{}: the directory's name says epoch {} batch {}, its manifest says "
                            "epoch {} batch {}: the manifest belongs to another checkpoint",
                            path, named->epoch, named->batch, resume.epoch, resume.batch));
  }
}

void check_identity(const LoadedCheckpoint& checkpoint, const std::string& path) {
  const Manifest& manifest = checkpoint.manifest;
  const ResumePoint resume = manifest.info.resume;
  const std::string state_path = (fs::path(path) / kStateFile).string();
  const std::string& bytes = checkpoint.files.at(kStateFile);
  std::string id;
  torch::Tensor position;
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(bytes.data(), bytes.size(), torch::kCPU);
    torch::serialize::InputArchive identity;
    c10::IValue saved_id;
    if (!archive.try_read("identity", identity) || !identity.try_read("id", saved_id) ||
        !saved_id.isString() || !identity.try_read("position", position)) {
      throw Error(fmt::format("{}: holds no checkpoint identity", state_path));
    }
    id = saved_id.toStringRef();
  } catch (const c10::Error& e) {
    throw Error(fmt::format("{}: cannot be read: {}", state_path, detail::first_line(e)));
  }
  const std::vector<int64_t> expected{resume.epoch, resume.batch, manifest.info.global_step};
  const bool same_position = position.scalar_type() == torch::kLong && position.dim() == 1 &&
                             position.numel() == 3 &&
                             std::vector<int64_t>(position.data_ptr<int64_t>(),
                                                  position.data_ptr<int64_t>() + 3) == expected;
  if (id != manifest.id || !same_position) {
    throw Error(fmt::format("{}: belongs to another checkpoint (id {}, the manifest's {})",
                            state_path, id, manifest.id));
  }
}

}  // namespace

LoadedCheckpoint read_checkpoint(const std::string& path) {
  const fs::path directory(path);
  if (!fs::is_directory(directory)) {
    throw Error(fmt::format("{}: not a checkpoint directory ({})", path,
                            fs::exists(directory) ? "not a directory" : "does not exist"));
  }
  const std::string manifest_path = (directory / kManifest).string();
  LoadedCheckpoint checkpoint;
  checkpoint.manifest = parse_manifest(io::read_file(manifest_path, kMaxManifestBytes), manifest_path);
  checkpoint.manifest.info.path = path;
  check_name(checkpoint.manifest, path);
  for (const auto& [name, expected] : checkpoint.manifest.files) {
    const std::string file = (directory / name).string();
    // At most one byte more than promised is read, so a bad manifest or an
    // appended file cannot make a large allocation.
    std::string bytes = io::read_file(file, expected.first);
    if (bytes.size() != expected.first) {
      throw Error(fmt::format("{}: {} bytes, the manifest says {} (truncated?)", file,
                              bytes.size(), expected.first));
    }
    const uint32_t crc = crc32_of(bytes);
    if (crc != expected.second) {
      throw Error(fmt::format("{}: CRC-32 0x{:08x}, the manifest says 0x{:08x} (corrupted)", file,
                              crc, expected.second));
    }
    // A manifest can be forged to match any file; LibTorch's reader must
    // still see only well-formed archives.
    if (const std::string fault = io::zip_archive_fault(bytes); !fault.empty()) {
      throw Error(fmt::format("{}: not an archive torch wrote: {}", file, fault));
    }
    checkpoint.files[name] = std::move(bytes);
  }
  check_identity(checkpoint, path);
  return checkpoint;
}

std::optional<LoadedCheckpoint> load_for_resume(const std::string& path) {
  const fs::path root(path);
  std::error_code error;
  if (!fs::exists(root, error)) {
    // Like Lightning's ckpt_path="last": a program may always pass the
    // directory its checkpoint callback writes, before the first exists.
    std::cerr << "trainloop: " << path << " does not exist yet, starting from the beginning\n";
    return std::nullopt;
  }
  if (fs::exists(root / kManifest, error)) return read_checkpoint(path);
  if (!fs::is_directory(root)) {
    throw Error(fmt::format("{}: cannot resume: not a checkpoint directory", path));
  }
  std::vector<std::string> names = checkpoint_names(path);
  if (names.empty()) {
    std::cerr << "trainloop: no checkpoint in " << path << ", starting from the beginning\n";
    return std::nullopt;
  }
  // The first invalid one is named with its problem; the rest are counted,
  // so thousands of stray directories make one line, not thousands.
  std::string first_problem;
  int64_t skipped = 0;
  for (auto name = names.rbegin(); name != names.rend(); ++name) {
    const std::string candidate = (root / *name).string();
    try {
      LoadedCheckpoint checkpoint = read_checkpoint(candidate);
      if (skipped > 1) {
        std::cerr << "trainloop: skipped " << skipped - 1 << " more invalid checkpoint"
                  << (skipped == 2 ? "" : "s") << " in " << path << "\n";
      }
      if (skipped > 0) std::cerr << "trainloop: resuming from " << candidate << "\n";
      return checkpoint;
    } catch (const Error& e) {
      if (skipped++ == 0) {
        std::cerr << "trainloop: skipping invalid checkpoint " << candidate << ": " << e.what()
                  << "\n";
        first_problem = e.what();
      }
    }
  }
  throw Error(fmt::format("{}: cannot resume: none of its {} checkpoints is valid; the newest: {}",
                          path, names.size(), first_problem));
}

}  // namespace detail
}  // namespace trainloop
