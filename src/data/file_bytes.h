#pragma once

#include <string>

namespace trainloop::data::detail {

// The whole content of a file. Grows its buffer only as bytes arrive, so the
// memory used is the data present. Throws Error naming the path for a
// missing file, anything but a regular file (refused before it is opened, so
// a FIFO cannot block), or a read error.
std::string read_file_bytes(const std::string& path);

}  // namespace trainloop::data::detail
