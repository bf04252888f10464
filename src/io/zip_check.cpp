#include "zip_check.h"

#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "byte_order.h"
#include "pickle.h"

namespace trainloop::io {

namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndRecord = 0x06054b50;
constexpr uint32_t kZip64EndRecord = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint16_t kZip64Extra = 0x0001;
constexpr uint64_t kEndRecordSize = 22;
constexpr uint64_t kMaxCommentSize = 0xffff;

// What Reader::fail throws; zip_archive_fault returns its text.
struct Fault {
  std::string what;
};

// Reads little-endian fields of `bytes`; every read is bounds-checked, and a
// read past the end fails with the field's name.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}

  uint64_t size() const { return bytes_.size(); }

  template <class T>
  T at(uint64_t offset, const char* field) const {
    if (offset > bytes_.size() || bytes_.size() - offset < sizeof(T)) {
      fail(fmt::format("{} at byte {} lies past the end ({} bytes)", field, offset, bytes_.size()));
    }
    const auto* at = reinterpret_cast<const unsigned char*>(bytes_.data()) + offset;
    return static_cast<T>(load_little_endian(at, sizeof(T)));
  }

  [[noreturn]] void fail(std::string what) const { throw Fault{std::move(what)}; }

 private:
  std::string_view bytes_;
};

// Where the central directory lies, from the end record (or its zip64 form).
struct Directory {
  uint64_t entries = 0;
  uint64_t size = 0;
  uint64_t offset = 0;
  uint64_t end = 0;  // where the records after the directory begin
};

std::optional<uint64_t> find_end_record(const Reader& in) {
  if (in.size() < kEndRecordSize) return std::nullopt;
  const uint64_t last = in.size() - kEndRecordSize;
  const uint64_t first = last > kMaxCommentSize ? last - kMaxCommentSize : 0;
  for (uint64_t at = last + 1; at-- > first;) {
    if (in.at<uint32_t>(at, "end record") == kEndRecord &&
        at + kEndRecordSize + in.at<uint16_t>(at + 20, "comment length") == in.size()) {
      return at;
    }
  }
  return std::nullopt;
}

// What torch.save wrote before PyTorch 1.6 (or with
// _use_new_zipfile_serialization=False): pickles one after another, the
// first the magic number 0x1950a86a20f9469cfc6c as a pickled long (PROTO 2,
// LONG1 of 10 bytes, little-endian); or, older still, a tar archive.
bool is_legacy_torch_save(std::string_view bytes) {
  constexpr std::string_view kLegacyMagic("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19",
                                          14);
  constexpr std::string_view kTarMagic("ustar", 5);
  constexpr size_t kTarMagicOffset = 257;
  return bytes.substr(0, kLegacyMagic.size()) == kLegacyMagic ||
         (bytes.size() > kTarMagicOffset && bytes.substr(kTarMagicOffset, 5) == kTarMagic);
}

Directory read_directory(const Reader& in, std::string_view bytes) {
  const auto end = find_end_record(in);
  if (!end && is_legacy_torch_save(bytes)) {
    in.fail(
        "PyTorch's legacy format (torch.save before PyTorch 1.6, or "
        "_use_new_zipfile_serialization=False), not a zip archive: load it in Python and save it "
        "again with torch.save's default format");
  }
  if (!end) in.fail("no end-of-central-directory record");
  if (in.at<uint16_t>(*end + 4, "disk number") != 0 ||
      in.at<uint16_t>(*end + 6, "directory disk") != 0) {
    in.fail("an archive split over several disks");
  }
  Directory directory;
  directory.entries = in.at<uint16_t>(*end + 10, "entry count");
  directory.size = in.at<uint32_t>(*end + 12, "directory size");
  directory.offset = in.at<uint32_t>(*end + 16, "directory offset");
  directory.end = *end;
  if (in.at<uint16_t>(*end + 8, "entries on this disk") != directory.entries) {
    in.fail("an archive split over several disks");
  }
  const bool zip64 = directory.entries == 0xffff || directory.size == 0xffffffff ||
                     directory.offset == 0xffffffff;
  if (zip64 || (*end >= 20 && in.at<uint32_t>(*end - 20, "zip64 locator") == kZip64Locator)) {
    if (*end < 20 || in.at<uint32_t>(*end - 20, "zip64 locator") != kZip64Locator) {
      in.fail("zip64 fields without a zip64 locator");
    }
    const uint64_t record = in.at<uint64_t>(*end - 12, "zip64 end record offset");
    if (record > *end - 20 || in.at<uint32_t>(record, "zip64 end record") != kZip64EndRecord) {
      in.fail(fmt::format("no zip64 end record at byte {}", record));
    }
    // A 32-bit field that is not saturated must agree: a reader may use either.
    const auto wide = [&](uint64_t narrow, uint64_t saturated, uint64_t offset, const char* field) {
      const uint64_t value = in.at<uint64_t>(record + offset, field);
      if (narrow != saturated && narrow != value) {
        in.fail(fmt::format("{} is {} in the zip64 end record but {} in the end record", field,
                            value, narrow));
      }
      return value;
    };
    directory.entries = wide(directory.entries, 0xffff, 32, "the entry count");
    directory.size = wide(directory.size, 0xffffffff, 40, "the directory size");
    directory.offset = wide(directory.offset, 0xffffffff, 48, "the directory offset");
    directory.end = record;
  }
  if (directory.offset > directory.end || directory.size > directory.end - directory.offset) {
    in.fail(fmt::format("the central directory (bytes {} to {}) does not end before byte {}",
                        directory.offset, directory.offset + directory.size, directory.end));
  }
  return directory;
}

// Replaces the 32-bit fields that say "see zip64" with the zip64 extra
// field's values, in the order the format gives them.
void read_zip64_extra(const Reader& in, uint64_t extra, uint64_t extra_end, uint64_t& uncompressed,
                      uint64_t& compressed, uint64_t& local_offset, const std::string& entry) {
  while (extra + 4 <= extra_end) {
    const uint16_t id = in.at<uint16_t>(extra, "extra field id");
    const uint16_t length = in.at<uint16_t>(extra + 2, "extra field length");
    if (extra + 4 + length > extra_end) in.fail(entry + ": an extra field runs past its entry");
    if (id == kZip64Extra) {
      uint64_t at = extra + 4;
      for (uint64_t* field : {&uncompressed, &compressed, &local_offset}) {
        if (*field != 0xffffffff) continue;
        if (at + 8 > extra + 4 + length) in.fail(entry + ": a zip64 extra field too short");
        *field = in.at<uint64_t>(at, "zip64 extra value");
        at += 8;
      }
      return;
    }
    extra += 4 + length;
  }
  if (uncompressed == 0xffffffff || compressed == 0xffffffff || local_offset == 0xffffffff) {
    in.fail(entry + ": zip64 sizes without a zip64 extra field");
  }
}

}  // namespace

std::string folded_case(std::string_view name) {
  std::string folded(name);
  for (char& c : folded) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return folded;
}

std::string zip_archive_fault(std::string_view bytes, std::vector<ZipEntry>* entries) try {
  const Reader in(bytes);
  const Directory directory = read_directory(in, bytes);
  uint64_t at = directory.offset;
  const uint64_t directory_end = directory.offset + directory.size;
  std::map<std::string, uint64_t, std::less<>> record_sizes;
  std::vector<std::pair<std::string, StorageClaim>> claims;  // by the pickle that makes them
  for (uint64_t i = 0; i < directory.entries; ++i) {
    const std::string entry = fmt::format("central directory entry {}", i + 1);
    if (at + 46 > directory_end || in.at<uint32_t>(at, "central header") != kCentralHeader) {
      in.fail(fmt::format("{} of {} is not where the directory says (byte {})", entry,
                          directory.entries, at));
    }
    const uint16_t method = in.at<uint16_t>(at + 10, "compression method");
    uint64_t compressed = in.at<uint32_t>(at + 20, "compressed size");
    uint64_t uncompressed = in.at<uint32_t>(at + 24, "uncompressed size");
    const uint16_t name_length = in.at<uint16_t>(at + 28, "name length");
    const uint16_t extra_length = in.at<uint16_t>(at + 30, "extra length");
    const uint16_t comment_length = in.at<uint16_t>(at + 32, "comment length");
    uint64_t local = in.at<uint32_t>(at + 42, "local header offset");
    const uint64_t next = at + 46 + name_length + extra_length + comment_length;
    if (next > directory_end) in.fail(entry + " runs past the central directory");
    read_zip64_extra(in, at + 46 + name_length, at + 46 + name_length + extra_length, uncompressed,
                     compressed, local, entry);
    // Stored (torch's tensor data) or deflated (TorchScript's code and
    // constants). Deflate expands at most 1032-fold, so a larger claim is a
    // lie that would make the reader allocate it.
    if (method == 0 && compressed != uncompressed) {
      in.fail(fmt::format("{} is stored with {} bytes but says it holds {}", entry, compressed,
                          uncompressed));
    }
    if (method == 8 && uncompressed / 1032 > compressed + 1) {
      in.fail(fmt::format("{} says its {} deflated bytes hold {}, more than deflate can", entry,
                          compressed, uncompressed));
    }
    if (method != 0 && method != 8) {
      in.fail(fmt::format("{} uses compression method {}; torch writes 0 (stored) or 8 (deflate)",
                          entry, method));
    }
    if (local > directory.offset || directory.offset - local < 30 ||
        in.at<uint32_t>(local, "local header") != kLocalHeader) {
      in.fail(fmt::format("{}: no local header at byte {}", entry, local));
    }
    const uint64_t data = local + 30 + in.at<uint16_t>(local + 26, "local name length") +
                          in.at<uint16_t>(local + 28, "local extra length");
    if (data > directory.offset || compressed > directory.offset - data) {
      in.fail(fmt::format("{}: its {} bytes of data from byte {} run past the entries", entry,
                          compressed, data));
    }
    // LibTorch's unpickler trusts the lengths and indices in its pickles.
    const std::string_view name = bytes.substr(at + 46, name_length);
    // LibTorch's zip reader (miniz) finds records by name regardless of case,
    // and either of two that share one.
    const std::string folded = folded_case(name);
    if (!record_sizes.emplace(folded, uncompressed).second) {
      in.fail(fmt::format("{} has the name of an earlier entry ({}, ignoring case)", entry, name));
    }
    if (folded.size() >= 4 && folded.substr(folded.size() - 4) == ".pkl") {
      if (method != 0) in.fail(fmt::format("{} is deflated; torch stores its pickles", name));
      std::vector<StorageClaim> found;
      const std::string fault = pickle_fault(bytes.substr(data, compressed), &found);
      if (!fault.empty()) in.fail(fmt::format("{}: {}", name, fault));
      for (auto& claim : found) claims.emplace_back(folded, std::move(claim));
    }
    if (entries != nullptr) {
      entries->push_back({std::string(name), bytes.substr(data, compressed), method == 0});
    }
    at = next;
  }
  // LibTorch sizes a storage by its pickle's count, whatever its record
  // holds: a shorter record would be read past its end. Those of
  // "archive/data.pkl" are "archive/data/<key>".
  for (const auto& [pickle, claim] : claims) {
    if (claim.bytes == 0) continue;  // LibTorch reads no record for an empty storage
    const std::string record = pickle.substr(0, pickle.size() - 4) + "/" + folded_case(claim.key);
    const auto found = record_sizes.find(record);
    if (found == record_sizes.end()) {
      in.fail(fmt::format("{}: storage \"{}\" (byte {}) is not in the archive; expected {}",
                          pickle, claim.key, claim.at, record));
    }
    if (found->second < claim.bytes) {
      in.fail(fmt::format("{}: storage \"{}\" (byte {}) needs {} bytes, {} holds {}", pickle,
                          claim.key, claim.at, claim.bytes, record, found->second));
    }
  }
  return {};
} catch (const Fault& fault) {
  return fault.what;
}

}  // namespace trainloop::io
