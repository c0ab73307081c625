// MappedFile: a whole file mapped read-only into memory, with errors that name the path.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

namespace conveyor {

// Movable, not copyable; unmaps on destruction. Thread-safe for reads.
class MappedFile {
 public:
  // Maps `path`. `kind` names what was expected in errors ("GGUF file"), `hint` is the fix
  // appended to a failure to open ("check --model"). Throws conveyor::Error(kModelFormat) when
  // the file cannot be opened, is not a regular file or cannot be mapped.
  static MappedFile open(const std::filesystem::path& path, std::string_view kind,
                         std::string_view hint);
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {static_cast<const std::byte*>(data_), size_}; }
  std::size_t size() const { return size_; }

  // Drops the resident pages that lie wholly inside [offset, offset + length): they are read
  // from the file again if touched. Lets a loader that converted some bytes stop holding both
  // copies in memory. Best effort: errors are ignored.
  void release(std::size_t offset, std::size_t length) const noexcept;

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// Reads the pages under `bytes` (part of a file mapping) in now and maps them, so touching them
// later costs no page fault (MADV_POPULATE_READ; MADV_WILLNEED read-ahead on older kernels).
// Best effort: errors are ignored.
void populate_pages(std::span<const std::byte> bytes) noexcept;

}  // namespace conveyor
