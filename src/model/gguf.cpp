// GGUF parsing (parse_gguf) with every count, length, type, shape and offset checked before
// use, typed metadata access, and the memory-mapped GgufFile. Rules: docs/gguf.md.
#include "conveyor/gguf.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "core/check.hpp"
#include "core/mapped_file.hpp"
#include "model/ggml_quants.hpp"

namespace conveyor {
namespace {

constexpr uint64_t kMaxKeyBytes = 65535;         // the spec's limit on key length
constexpr uint64_t kMaxNameBytes = 63;           // GGML_MAX_NAME (64) less the terminating NUL
constexpr uint32_t kMaxDims = 4;                 // GGML_MAX_DIMS
constexpr uint64_t kMinKvBytes = 8 + 1 + 4 + 1;  // key length, key, type, u8 value
constexpr uint64_t kMinTensorInfoBytes =
    8 + 1 + 4 + 8 + 4 + 8;  // name, n_dims, one ne, type, offset

// Size of a fixed-width value type; 0 for strings and arrays.
uint64_t fixed_size(GgufType type) {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof value);
  return value;
}

// Reads little-endian fields of a file image front to back; every read checks the bytes left.
class Cursor {
 public:
  Cursor(std::span<const std::byte> file, std::string_view origin) : file_(file), origin_(origin) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return file_.size() - pos_; }

  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    const T value = load<T>(file_.data() + pos_);
    pos_ += sizeof(T);
    return value;
  }

  // A u64 length and that many bytes; `element` names an array element in errors.
  static constexpr uint64_t kNoElement = ~uint64_t{0};
  std::span<const std::byte> string(std::string_view what, uint64_t element = kNoElement) {
    const auto length = read<uint64_t>(what);
    if (length > left()) {
      fail(ErrorCode::kModelFormat,
           "{}: {}{} has length {} at byte {}, but only {} bytes are left in the file; the file "
           "is truncated or corrupt",
           origin_, element == kNoElement ? "" : fmt::format("element {} of ", element), what,
           length, pos_ - 8, left());
    }
    const auto bytes = file_.subspan(pos_, length);
    pos_ += length;
    return bytes;
  }

  // The bytes between two earlier positions.
  std::span<const std::byte> slice(uint64_t from, uint64_t to) const {
    return file_.subspan(from, to - from);
  }

  std::span<const std::byte> take(uint64_t n, std::string_view what) {
    need(n, what);
    const auto bytes = file_.subspan(pos_, n);
    pos_ += n;
    return bytes;
  }

 private:
  void need(uint64_t n, std::string_view what) const {
    if (n > left()) {
      fail(ErrorCode::kModelFormat,
           "{}: the file ends at byte {} inside {} ({} more bytes needed); the file is truncated",
           origin_, file_.size(), what, n - left());
    }
  }

  std::span<const std::byte> file_;
  std::string_view origin_;
  uint64_t pos_ = 0;
};

std::string as_string(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// A printable, bounded rendering of a key or name from the file for messages.
std::string printable(std::span<const std::byte> bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < 80; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (bytes.size() > 80) out += "...";
  return out;
}

GgufType value_type(uint32_t raw, std::string_view origin, std::string_view key, bool element) {
  if (raw > static_cast<uint32_t>(GgufType::kF64)) {
    fail(ErrorCode::kModelFormat,
         "{}: metadata \"{}\" has {}value type {}, which is not a GGUF type (0..12)", origin, key,
         element ? "array element " : "", static_cast<int32_t>(raw));
  }
  return static_cast<GgufType>(raw);
}

// One scalar of `type` (not an array).
GgufValue::Scalar read_scalar(Cursor& in, GgufType type, std::string_view origin,
                              std::string_view key) {
  switch (type) {
    case GgufType::kU8:
      return uint64_t{in.read<uint8_t>(key)};
    case GgufType::kI8:
      return int64_t{in.read<int8_t>(key)};
    case GgufType::kU16:
      return uint64_t{in.read<uint16_t>(key)};
    case GgufType::kI16:
      return int64_t{in.read<int16_t>(key)};
    case GgufType::kU32:
      return uint64_t{in.read<uint32_t>(key)};
    case GgufType::kI32:
      return int64_t{in.read<int32_t>(key)};
    case GgufType::kU64:
      return in.read<uint64_t>(key);
    case GgufType::kI64:
      return in.read<int64_t>(key);
    case GgufType::kF32:
      return double{in.read<float>(key)};
    case GgufType::kF64:
      return in.read<double>(key);
    case GgufType::kBool: {
      const auto b = in.read<uint8_t>(key);
      if (b > 1) {
        fail(ErrorCode::kModelFormat, "{}: metadata \"{}\" is a bool stored as {}; must be 0 or 1",
             origin, key, b);
      }
      return b == 1;
    }
    case GgufType::kString:
      return as_string(in.string(fmt::format("the string value of \"{}\"", key)));
    case GgufType::kArray:
      break;
  }
  CONVEYOR_ASSERT(false);
}

GgufArray read_array(Cursor& in, std::string_view origin, std::string_view key) {
  GgufArray array;
  array.element_type = value_type(in.read<uint32_t>(key), origin, key, /*element=*/true);
  if (array.element_type == GgufType::kArray) {
    fail(ErrorCode::kModelFormat,
         "{}: metadata \"{}\" is an array of arrays, which conveyor (like llama.cpp) does not "
         "accept",
         origin, key);
  }
  array.count = in.read<uint64_t>(key);
  const uint64_t element_bytes = fixed_size(array.element_type);
  const uint64_t min_bytes = element_bytes != 0 ? element_bytes : 8;  // a string is >= 8 bytes
  if (array.count > in.left() / min_bytes) {
    fail(ErrorCode::kModelFormat,
         "{}: metadata \"{}\" claims {} elements of {}, more than the {} bytes left in the file "
         "can hold; the file is truncated or corrupt",
         origin, key, array.count, gguf_type_name(array.element_type), in.left());
  }
  if (element_bytes != 0) {
    array.bytes = in.take(array.count * element_bytes, key);
    if (array.element_type == GgufType::kBool) {
      for (std::byte b : array.bytes) {
        if (static_cast<uint8_t>(b) > 1) {
          fail(ErrorCode::kModelFormat,
               "{}: metadata \"{}\" holds a bool stored as {}; must be 0 or 1", origin, key,
               static_cast<uint8_t>(b));
        }
      }
    }
  } else {
    const uint64_t first = in.pos();
    for (uint64_t i = 0; i < array.count; ++i) {
      in.string(key, i);
    }
    array.bytes = in.slice(first, in.pos());  // every length checked
  }
  return array;
}

void check_key(std::span<const std::byte> key, std::string_view origin, uint64_t index) {
  if (key.empty()) {
    fail(ErrorCode::kModelFormat, "{}: metadata key {} is empty; GGUF keys are non-empty ASCII",
         origin, index);
  }
  if (key.size() > kMaxKeyBytes) {
    fail(ErrorCode::kModelFormat, "{}: metadata key {} is {} bytes long; the limit is {}", origin,
         index, key.size(), kMaxKeyBytes);
  }
  for (std::byte b : key) {
    const auto c = static_cast<unsigned char>(b);
    if (c < 0x20 || c >= 0x7f) {
      fail(ErrorCode::kModelFormat,
           "{}: metadata key {} \"{}\" has the byte 0x{:02x}; GGUF keys are printable ASCII",
           origin, index, printable(key), c);
    }
  }
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

GgufTensorInfo read_tensor_info(Cursor& in, std::string_view origin, uint64_t index) {
  GgufTensorInfo info;
  const auto name = in.string(fmt::format("the name of tensor {}", index));
  if (name.empty() || name.size() > kMaxNameBytes) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor {} has a name of {} bytes (\"{}\"); names must have 1 to {} bytes", origin,
         index, name.size(), printable(name), kMaxNameBytes);
  }
  info.name = as_string(name);
  const auto n_dims = in.read<uint32_t>(info.name);
  if (n_dims < 1 || n_dims > kMaxDims) {
    fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" has {} dimensions; ggml allows 1 to {}",
         origin, info.name, n_dims, kMaxDims);
  }
  uint64_t numel = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const auto ne = in.read<int64_t>(info.name);
    if (ne < 0) {
      fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" has ne[{}] = {}; dimensions must be >= 0",
           origin, info.name, d, ne);
    }
    if (!checked_mul(numel, static_cast<uint64_t>(ne), numel) ||
        numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" has an element count that overflows 64 bits (ne[{}] = {})", origin,
           info.name, d, ne);
    }
    info.ne.push_back(ne);
  }
  info.type = in.read<uint32_t>(info.name);
  const GgmlTypeTraits* traits = ggml_type_traits(info.type);
  if (traits == nullptr) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" has ggml {} (id {}), which is not a tensor type of the GGUF format; "
         "re-convert the model with a current llama.cpp",
         origin, info.name, ggml_type_name(info.type), static_cast<int32_t>(info.type));
  }
  if (info.ne[0] % traits->block_elems != 0) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" is {} with rows of {} elements, but {} packs blocks of {}; a row must "
         "be a whole number of blocks",
         origin, info.name, traits->name, info.ne[0], traits->name, traits->block_elems);
  }
  const auto blocks = static_cast<uint64_t>(numel) / static_cast<uint64_t>(traits->block_elems);
  if (!checked_mul(blocks, static_cast<uint64_t>(traits->block_bytes), info.n_bytes)) {
    fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" has a byte size that overflows 64 bits",
         origin, info.name);
  }
  info.offset = in.read<uint64_t>(info.name);
  return info;
}

uint64_t align_up(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace

std::string_view gguf_type_name(GgufType type) noexcept {
  switch (type) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return "?";
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne)
    n *= d;
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const {
  return {ne.rbegin(), ne.rend()};
}

GgufContents parse_gguf(std::span<const std::byte> file, std::string_view origin) {
  GgufContents out;
  out.origin = std::string(origin);
  if (file.size() < 24) {
    fail(ErrorCode::kModelFormat,
         "{}: file is {} bytes, shorter than the 24-byte GGUF header; the file is truncated or "
         "not GGUF",
         origin, file.size());
  }
  Cursor in(file, origin);
  const auto magic = in.take(4, "the magic");
  if (std::memcmp(magic.data(), "GGUF", 4) != 0) {
    fail(ErrorCode::kModelFormat,
         "{}: starts with \"{}\", not the GGUF magic \"GGUF\"; this is not a GGUF file", origin,
         printable(magic));
  }
  out.version = in.read<uint32_t>("the version");
  if (out.version != 0 && (out.version & 0xFFFFu) == 0) {
    fail(ErrorCode::kModelFormat,
         "{}: version field 0x{:08x} is byte-swapped: this is a big-endian GGUF file, which "
         "conveyor does not read; convert it on a little-endian machine",
         origin, out.version);
  }
  if (out.version < 2 || out.version > 3) {
    fail(ErrorCode::kModelFormat,
         "{}: GGUF version {} is not supported; conveyor reads versions 2 and 3{}", origin,
         out.version,
         out.version < 2 ? " (re-convert the model with a current llama.cpp)"
                         : " (this file is newer than conveyor)");
  }
  const auto n_tensors = in.read<uint64_t>("the tensor count");
  const auto n_kv = in.read<uint64_t>("the metadata count");
  if (n_kv > in.left() / kMinKvBytes || n_tensors > in.left() / kMinTensorInfoBytes ||
      n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > in.left()) {
    fail(ErrorCode::kModelFormat,
         "{}: the header claims {} metadata entries and {} tensors, more than the {} bytes left "
         "in the file can hold; the file is truncated or corrupt",
         origin, n_kv, n_tensors, in.left());
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    const auto key_bytes = in.string(fmt::format("metadata key {}", i));
    check_key(key_bytes, origin, i);
    std::string key = as_string(key_bytes);
    if (out.metadata.contains(key)) {
      fail(ErrorCode::kModelFormat, "{}: metadata key \"{}\" appears twice; keys must be unique",
           origin, key);
    }
    GgufValue value;
    value.type = value_type(in.read<uint32_t>(key), origin, key, /*element=*/false);
    if (value.type == GgufType::kArray) {
      value.array = read_array(in, origin, key);
    } else {
      value.scalar = read_scalar(in, value.type, origin, key);
    }
    out.metadata.emplace(std::move(key), std::move(value));
  }

  if (const GgufValue* alignment = out.find("general.alignment")) {
    if (alignment->type != GgufType::kU32) {
      fail(ErrorCode::kModelFormat, "{}: general.alignment must be a u32 but is a {}", origin,
           gguf_type_name(alignment->type));
    }
    const uint64_t a = std::get<uint64_t>(alignment->scalar);
    if (a == 0 || !std::has_single_bit(a)) {
      fail(ErrorCode::kModelFormat, "{}: general.alignment is {}; it must be a power of two",
           origin, a);
    }
    out.alignment = a;
  }

  std::set<std::string_view> names;
  out.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    out.tensors.push_back(read_tensor_info(in, origin, i));
    if (!names.insert(out.tensors.back().name).second) {
      fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" appears twice; names must be unique", origin,
           out.tensors.back().name);
    }
  }
  out.data_offset = align_up(in.pos(), out.alignment);
  if (n_tensors == 0) return out;
  if (out.data_offset > file.size()) {
    fail(ErrorCode::kModelFormat,
         "{}: the data section would start at byte {} (the tensor table ends at {}, aligned to "
         "{}), past the end of the {}-byte file; the file is truncated",
         origin, out.data_offset, in.pos(), out.alignment, file.size());
  }
  const uint64_t data_size = file.size() - out.data_offset;
  for (const GgufTensorInfo& info : out.tensors) {
    if (info.offset % out.alignment != 0) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" starts at data offset {}, which is not a multiple of the alignment "
           "{}",
           origin, info.name, info.offset, out.alignment);
    }
    if (info.offset > data_size || info.n_bytes > data_size - info.offset) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" ({} bytes at data offset {}) ends past the {} bytes of the data "
           "section; the file is truncated or corrupt",
           origin, info.name, info.n_bytes, info.offset, data_size);
    }
  }
  // No overlaps; gaps (allowed by the spec, refused by llama.cpp) are counted.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const GgufTensorInfo& info : out.tensors)
    by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return std::pair(a->offset, a->n_bytes) < std::pair(b->offset, b->n_bytes);
  });
  uint64_t expected = 0;
  for (size_t i = 0; i < by_offset.size(); ++i) {
    const GgufTensorInfo& cur = *by_offset[i];
    if (i > 0) {
      const GgufTensorInfo& prev = *by_offset[i - 1];
      if (cur.offset < prev.offset + prev.n_bytes) {
        fail(ErrorCode::kModelFormat,
             "{}: tensors \"{}\" [{}, {}) and \"{}\" [{}, {}) overlap in the data section", origin,
             prev.name, prev.offset, prev.offset + prev.n_bytes, cur.name, cur.offset,
             cur.offset + cur.n_bytes);
      }
    }
    if (cur.offset > expected) out.gap_bytes += cur.offset - expected;
    expected = align_up(cur.offset + cur.n_bytes, out.alignment);
  }
  return out;
}

// ---- typed metadata access ---------------------------------------------------------------

namespace {

[[noreturn]] void wrong_type(const GgufContents& c, std::string_view key, const GgufValue& value,
                             std::string_view wanted) {
  fail(ErrorCode::kModelFormat, "{}: metadata \"{}\" must be {} but is {}{}", c.origin, key, wanted,
       value.type == GgufType::kArray ? "an array of " : "a ",
       gguf_type_name(value.type == GgufType::kArray ? value.array.element_type : value.type));
}

int64_t scalar_int(const GgufContents& c, std::string_view key, const GgufValue::Scalar& s) {
  if (const auto* v = std::get_if<int64_t>(&s)) return *v;
  const uint64_t u = std::get<uint64_t>(s);
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail(ErrorCode::kModelFormat, "{}: metadata \"{}\" = {} does not fit in a signed 64-bit value",
         c.origin, key, u);
  }
  return static_cast<int64_t>(u);
}

bool is_integer(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

// Decodes every element of a fixed-size array as a Scalar.
template <typename F>
void for_each_element(const GgufArray& array, F&& f) {
  const uint64_t size = fixed_size(array.element_type);
  const std::byte* p = array.bytes.data();
  for (uint64_t i = 0; i < array.count; ++i, p += size) {
    switch (array.element_type) {
      case GgufType::kU8:
        f(GgufValue::Scalar(uint64_t{load<uint8_t>(p)}));
        break;
      case GgufType::kI8:
        f(GgufValue::Scalar(int64_t{load<int8_t>(p)}));
        break;
      case GgufType::kU16:
        f(GgufValue::Scalar(uint64_t{load<uint16_t>(p)}));
        break;
      case GgufType::kI16:
        f(GgufValue::Scalar(int64_t{load<int16_t>(p)}));
        break;
      case GgufType::kU32:
        f(GgufValue::Scalar(uint64_t{load<uint32_t>(p)}));
        break;
      case GgufType::kI32:
        f(GgufValue::Scalar(int64_t{load<int32_t>(p)}));
        break;
      case GgufType::kU64:
        f(GgufValue::Scalar(load<uint64_t>(p)));
        break;
      case GgufType::kI64:
        f(GgufValue::Scalar(load<int64_t>(p)));
        break;
      case GgufType::kF32:
        f(GgufValue::Scalar(double{load<float>(p)}));
        break;
      case GgufType::kF64:
        f(GgufValue::Scalar(load<double>(p)));
        break;
      case GgufType::kBool:
        f(GgufValue::Scalar(load<uint8_t>(p) != 0));
        break;
      case GgufType::kString:
      case GgufType::kArray:
        CONVEYOR_ASSERT(false);
    }
  }
}

}  // namespace

const GgufValue* GgufContents::find(std::string_view key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

std::optional<int64_t> GgufContents::get_int(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (!is_integer(value->type)) wrong_type(*this, key, *value, "an integer");
  return scalar_int(*this, key, value->scalar);
}

std::optional<double> GgufContents::get_float(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (value->type != GgufType::kF32 && value->type != GgufType::kF64) {
    wrong_type(*this, key, *value, "a float");
  }
  return std::get<double>(value->scalar);
}

std::optional<bool> GgufContents::get_bool(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (value->type != GgufType::kBool) wrong_type(*this, key, *value, "a bool");
  return std::get<bool>(value->scalar);
}

std::optional<std::string> GgufContents::get_string(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (value->type != GgufType::kString) wrong_type(*this, key, *value, "a string");
  return std::get<std::string>(value->scalar);
}

std::optional<std::vector<std::string>> GgufContents::get_strings(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (value->type != GgufType::kArray || value->array.element_type != GgufType::kString) {
    wrong_type(*this, key, *value, "an array of strings");
  }
  // parse_gguf checked every length; decode with the same bounds anyway.
  std::vector<std::string> out;
  out.reserve(value->array.count);
  Cursor in(value->array.bytes, origin);
  for (uint64_t i = 0; i < value->array.count; ++i)
    out.push_back(as_string(in.string(key)));
  return out;
}

std::optional<std::vector<int64_t>> GgufContents::get_ints(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (value->type != GgufType::kArray || !is_integer(value->array.element_type)) {
    wrong_type(*this, key, *value, "an array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(value->array.count);
  for_each_element(value->array,
                   [&](const GgufValue::Scalar& s) { out.push_back(scalar_int(*this, key, s)); });
  return out;
}

std::optional<std::vector<float>> GgufContents::get_floats(std::string_view key) const {
  const GgufValue* value = find(key);
  if (value == nullptr) return std::nullopt;
  if (value->type != GgufType::kArray || (value->array.element_type != GgufType::kF32 &&
                                          value->array.element_type != GgufType::kF64)) {
    wrong_type(*this, key, *value, "an array of floats");
  }
  std::vector<float> out;
  out.reserve(value->array.count);
  for_each_element(value->array, [&](const GgufValue::Scalar& s) {
    out.push_back(static_cast<float>(std::get<double>(s)));
  });
  return out;
}

const GgufTensorInfo* GgufContents::find_tensor(std::string_view name) const {
  for (const GgufTensorInfo& info : tensors) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

// ---- GgufFile ----------------------------------------------------------------------------

GgufFile GgufFile::open(const std::filesystem::path& path) {
  GgufFile file;
  file.path_ = path;
  file.map_ = std::make_shared<const MappedFile>(
      MappedFile::open(path, "GGUF file", "check --model (a .gguf file or a directory)"));
  file.contents_ = parse_gguf(file.map_->bytes(), path.string());
  if (file.contents_.gap_bytes > 0) {
    spdlog::warn("{}: {} bytes lie between tensors (llama.cpp would refuse the file)",
                 path.string(), file.contents_.gap_bytes);
  }
  return file;
}

GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

uint64_t GgufFile::file_size() const {
  return map_ ? map_->size() : 0;
}

std::span<const std::byte> GgufFile::bytes(const GgufTensorInfo& info) const {
  const uint64_t size = file_size();
  const uint64_t begin = contents_.data_offset + info.offset;
  if (begin < contents_.data_offset || begin > size || info.n_bytes > size - begin) {
    fail(ErrorCode::kInvalidArgument,
         "tensor \"{}\" ({} bytes at data offset {}) is outside {}; was the GgufTensorInfo taken "
         "from another file?",
         info.name, info.n_bytes, info.offset, path_.string());
  }
  return map_->bytes().subspan(begin, info.n_bytes);
}

void GgufFile::release_pages(const GgufTensorInfo& info) const {
  map_->release(contents_.data_offset + info.offset, info.n_bytes);
}

void GgufFile::release_pages(const GgufTensorInfo& info, uint64_t offset, uint64_t length) const {
  if (offset >= info.n_bytes) return;
  map_->release(contents_.data_offset + info.offset + offset,
                std::min<uint64_t>(length, info.n_bytes - offset));
}

}  // namespace conveyor
