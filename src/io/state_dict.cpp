#include "state_dict.h"

#include <fmt/format.h>

#include <map>

#include "pickle.h"
#include "trainloop/error.h"
#include "zip_check.h"

namespace trainloop::io {

std::vector<StateEntry> read_state_dict(std::string_view archive) {
  std::vector<ZipEntry> entries;
  if (const std::string fault = zip_archive_fault(archive, &entries); !fault.empty()) {
    throw Error(fault);
  }
  // torch.save's layout: <name>/data.pkl, its storages in <name>/data/.
  std::map<std::string, ZipEntry> records;
  const ZipEntry* pickle = nullptr;
  for (const ZipEntry& entry : entries) {
    const std::string folded = folded_case(entry.name);
    if (folded == "data.pkl" ||
        (folded.size() > 9 && folded.compare(folded.size() - 9, 9, "/data.pkl") == 0)) {
      if (pickle != nullptr) {
        throw Error(fmt::format("holds two pickles, {} and {}", pickle->name, entry.name));
      }
      pickle = &entry;
    }
    records.emplace(folded, entry);
  }
  if (pickle == nullptr) throw Error("holds no data.pkl; torch.save writes one");
  return read_state_dict_pickle(*pickle, records);
}

}  // namespace trainloop::io
