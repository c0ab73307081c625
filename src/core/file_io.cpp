// write_file: one place for output files and their error messages.
#include "core/file_io.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <system_error>

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

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(std::ostream&)>& body) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) {
      fail(ErrorCode::kInvalidArgument,
           "cannot create {}: {}; check the directory exists and is writable", tmp.string(),
           std::strerror(errno));
    }
    body(out);
    out.flush();
    if (!out) {
      fail(ErrorCode::kInvalidArgument, "writing {} failed (disk full?): {}", tmp.string(),
           std::strerror(errno));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    fail(ErrorCode::kInvalidArgument, "cannot rename {} to {}: {}", tmp.string(), path.string(),
         ec.message());
  }
}

}  // namespace conveyor
