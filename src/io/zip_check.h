#pragma once

// A structural check of the zip archives torch writes (torch.save, the C++
// serializer, pickle_save), run before LibTorch's own reader sees untrusted
// bytes: LibTorch 1.13's zip reader reads out of bounds on some malformed
// archives (found by fuzz/weights_fuzzer). Private to the library.

#include <string>
#include <string_view>
#include <vector>

namespace trainloop::io {

/// An entry of an archive, as `zip_archive_fault` lists it once the archive
/// passed: its name, its bytes as they lie in the archive, and whether they
/// are stored as they are (not deflated).
struct ZipEntry {
  std::string name;
  std::string_view data;
  bool stored = true;
};

/// The first fault of `bytes` as a zip archive that torch writes, e.g. "no
/// end-of-central-directory record"; empty when its end record, central
/// directory, local headers and entry data all lie inside `bytes`, on one
/// disk, every entry stored or deflated (as torch writes them) and no
/// deflated entry claiming more than deflate can expand to. Zip64 records and
/// fields are read, and must agree with the 32-bit ones they stand beside.
/// Every stored `.pkl` entry must also pass `pickle_fault`, and each storage
/// it names must be a record holding at least the bytes the pickle claims.
/// When it passes, its entries are appended to `entries` if given.
std::string zip_archive_fault(std::string_view bytes, std::vector<ZipEntry>* entries = nullptr);

/// `name` as LibTorch's zip reader (miniz) compares names: ASCII letters in
/// lower case.
std::string folded_case(std::string_view name);

}  // namespace trainloop::io
