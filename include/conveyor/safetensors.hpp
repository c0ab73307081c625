// Safetensors reading: memory-mapped, validated headers, single-file or sharded checkpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/checkpoint.hpp"
#include "conveyor/dtype.hpp"

namespace conveyor {

class MappedFile;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Byte range inside the file's data section (which starts after the 8-byte length and the
  // JSON header): [data_begin, data_end).
  uint64_t data_begin = 0;
  uint64_t data_end = 0;

  int64_t numel() const;
};

// Parses and validates a whole safetensors file image: the 8-byte header length, the JSON
// header, dtypes, shapes, offsets inside the data section, no overlapping tensors and
// shape x dtype size == byte span. Returns the tensors sorted by name. `origin` names the file
// in error messages. Throws conveyor::Error(kModelFormat) on any problem; never reads out of
// bounds. Exposed for the fuzzer and tests.
std::vector<TensorInfo> parse_safetensors(std::span<const std::byte> file, std::string_view origin);

// One memory-mapped .safetensors file. Movable, not copyable. Thread-safe for reads.
class SafeTensorsFile {
 public:
  static SafeTensorsFile open(const std::filesystem::path& path);
  SafeTensorsFile(SafeTensorsFile&&) noexcept;
  SafeTensorsFile& operator=(SafeTensorsFile&&) noexcept;
  ~SafeTensorsFile();

  const std::filesystem::path& path() const { return path_; }
  uint64_t file_size() const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr when absent
  std::span<const std::byte> bytes(const TensorInfo& info) const;
  // Holds the mapping alive (for tensors computed from in place).
  std::shared_ptr<const void> mapping() const { return map_; }

 private:
  SafeTensorsFile() = default;
  std::filesystem::path path_;
  std::shared_ptr<const MappedFile> map_;  // the whole file
  std::size_t data_offset_ = 0;            // 8 + header length
  std::vector<TensorInfo> tensors_;
};

// The weights of a model directory: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json`. Shards are mapped lazily, when one of their tensors is first
// requested, so a pipeline stage maps only the shards that hold its layers. Thread-safe.
class SafeTensors : public TensorSource {
 public:
  static SafeTensors open(const std::filesystem::path& model_dir);
  SafeTensors(SafeTensors&&) noexcept;
  SafeTensors& operator=(SafeTensors&&) noexcept;
  ~SafeTensors() override;

  bool contains(std::string_view name) const override;
  // Shape and dtype of a tensor (maps its shard). Throws kModelFormat when absent.
  TensorInfo info(std::string_view name) const;
  // Loads a tensor converted to fp32 after checking its shape equals `expected_shape`; the error
  // names the tensor, both shapes and the file.
  std::vector<float> load_f32(std::string_view name,
                              std::span<const int64_t> expected_shape) const override;
  // F32 and BF16 tensors in place where their offset is aligned for the dtype.
  std::optional<StoredTensor> stored(std::string_view name, std::span<const int64_t> expected_shape,
                                     DType dtype) const override;
  uint64_t bytes_read() const override;
  // Number of shard files mapped so far (for tests of lazy loading).
  std::size_t n_mapped_files() const;

 private:
  struct Impl;
  explicit SafeTensors(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor
