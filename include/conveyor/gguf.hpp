// GGUF reading: a validating parser of the header, metadata and tensor table (versions 2 and 3),
// and a memory-mapped file. The format: ggml-org/ggml docs/gguf.md; what conveyor checks:
// docs/gguf.md.
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
#include <variant>
#include <vector>

namespace conveyor {

class MappedFile;

// ggml tensor element types by their on-disk id. Only the ones conveyor dequantizes are named;
// every other id of the format is still known by its block geometry (see ggml_type_name).
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

// "Q4_K", "IQ2_XXS", ...; "type 4 (removed Q4_2)" or "unknown type 1000" for ids not in the
// format.
std::string ggml_type_name(uint32_t type);
// Whether conveyor can dequantize `type`, and the list it can ("F32, F16, BF16, Q4_0, ...").
bool ggml_type_supported(uint32_t type) noexcept;
std::string_view supported_ggml_types() noexcept;

// Metadata value types of GGUF (the ids of the file format).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
std::string_view gguf_type_name(GgufType type) noexcept;

// An array value: `count` elements of `element_type` (never kArray), stored as in the file
// (little-endian numbers; strings as a u64 length and the bytes). Refers to the parsed image.
struct GgufArray {
  GgufType element_type = GgufType::kU8;
  uint64_t count = 0;
  std::span<const std::byte> bytes;
};

// One metadata value. Integer scalars are widened to int64_t (signed types) or uint64_t
// (unsigned), floats to double.
struct GgufValue {
  using Scalar = std::variant<int64_t, uint64_t, double, bool, std::string>;
  GgufType type = GgufType::kU32;
  Scalar scalar;    // not arrays
  GgufArray array;  // type == kArray
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;        // ggml type id
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest (contiguous) dimension
  uint64_t offset = 0;      // from the start of the data section; a multiple of the alignment
  uint64_t n_bytes = 0;     // ne[0] / block_elems * block_bytes * ne[1] * ...

  int64_t numel() const;
  // Row-major (Hugging Face / numpy) shape: ne reversed, e.g. a projection [out, in].
  std::vector<int64_t> shape() const;
};

// Everything parse_gguf found; offsets are relative to the data section. Array values refer to
// the parsed image, which must outlive the contents.
struct GgufContents {
  std::string origin;  // the file, for error messages
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // start of the data section in the file
  std::map<std::string, GgufValue, std::less<>> metadata;
  std::vector<GgufTensorInfo> tensors;  // file order
  // Bytes between tensors that llama.cpp's stricter reader would refuse (offsets are not the
  // running sum of padded sizes); GgufFile::open logs them. Zero in files llama.cpp writes.
  uint64_t gap_bytes = 0;

  const GgufValue* find(std::string_view key) const;  // nullptr when absent
  // Typed getters: nullopt when the key is absent; conveyor::Error(kModelFormat) naming the key
  // when it has another type or, for integers, a value outside int64_t.
  std::optional<int64_t> get_int(std::string_view key) const;   // any integer type
  std::optional<double> get_float(std::string_view key) const;  // f32 or f64
  std::optional<bool> get_bool(std::string_view key) const;
  std::optional<std::string> get_string(std::string_view key) const;
  std::optional<std::vector<std::string>> get_strings(std::string_view key) const;
  std::optional<std::vector<int64_t>> get_ints(std::string_view key) const;  // integer arrays
  std::optional<std::vector<float>> get_floats(std::string_view key) const;  // f32/f64 arrays

  const GgufTensorInfo* find_tensor(std::string_view name) const;  // nullptr when absent
};

// Parses and validates a whole GGUF file image: magic, version (2 or 3; big-endian files are
// refused), counts bounded by the bytes left, every string, key and value type, no duplicate
// keys or tensor names, general.alignment (u32, a power of two), tensor dimensions and types,
// byte sizes without overflow, offsets aligned, in the file and not overlapping. `origin` names
// the file in errors. Throws conveyor::Error(kModelFormat); never reads out of bounds or
// allocates more than the input can describe. Exposed for the fuzzer and tests.
GgufContents parse_gguf(std::span<const std::byte> file, std::string_view origin);

// One memory-mapped GGUF file. Movable, not copyable; thread-safe for reads.
class GgufFile {
 public:
  // Maps and parses `path`; errors name the file.
  static GgufFile open(const std::filesystem::path& path);
  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  const std::filesystem::path& path() const { return path_; }
  uint64_t file_size() const;
  // Metadata and tensor table (valid while this file is).
  const GgufContents& contents() const { return contents_; }

  // The tensor's bytes inside the mapping.
  std::span<const std::byte> bytes(const GgufTensorInfo& info) const;
  // Tells the kernel the pages of `info` are no longer needed (they are read from the file
  // again if touched), so a loader that converted a tensor does not keep both copies resident.
  void release_pages(const GgufTensorInfo& info) const;
  // The same for bytes [offset, offset + length) of the tensor's data (whole pages inside it).
  void release_pages(const GgufTensorInfo& info, uint64_t offset, uint64_t length) const;
  // Holds the mapping alive (for tensors computed from in place), not the parsed metadata.
  std::shared_ptr<const void> mapping() const { return map_; }

 private:
  GgufFile() = default;
  std::filesystem::path path_;
  std::shared_ptr<const MappedFile> map_;
  GgufContents contents_;
};

}  // namespace conveyor
