// write_file: one place for output files and their error messages.
#include "core/file_io.hpp"

#include <fstream>

#include "core/check.hpp"

namespace conveyor {

void write_file(const std::filesystem::path& path, std::string_view bytes, std::string_view what) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    fail(ErrorCode::kInvalidArgument,
         "cannot open {} for writing the {}: check that the directory exists and is writable",
         path.string(), what);
  }
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) {
    fail(ErrorCode::kInvalidArgument,
         "writing {} bytes of {} to {} failed: check the free disk space", bytes.size(), what,
         path.string());
  }
}

}  // namespace conveyor
