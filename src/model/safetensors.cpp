// Safetensors reading: header validation (parse_safetensors), one memory-mapped file
// (SafeTensorsFile) and a model directory of one file or lazily mapped shards (SafeTensors).
#include "conveyor/safetensors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

#include "core/check.hpp"
#include "core/dtype_convert.hpp"
#include "core/json_util.hpp"
#include "core/mapped_file.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

using nlohmann::json;

// The safetensors reference implementation refuses headers above 100 MB as well.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

constexpr std::string_view kSingleFileName = "model.safetensors";
constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

// Every dtype name the safetensors format defines; the ones conveyor cannot read get a clearer
// error than an unknown name.
constexpr std::string_view kKnownDtypes[] = {
    "BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "I16",     "U16",  "I32",    "U32",
    "I64",  "U64", "F64", "F4",      "F6_E2M3", "F6_E3M2", "E8M0", "F8_E8M0"};

bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

// A non-negative JSON integer, or nullopt.
std::optional<uint64_t> as_u64(const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    int64_t v = value.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

std::string shape_string(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

TensorInfo parse_entry(const std::string& name, const json& entry, uint64_t data_size,
                       std::string_view origin) {
  if (!entry.is_object()) {
    fail(ErrorCode::kModelFormat,
         "{}: header entry for tensor \"{}\" must be an object with dtype, shape and "
         "data_offsets but is {}",
         origin, name, json_type_phrase(entry));
  }
  TensorInfo info;
  info.name = name;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" has no string \"dtype\" (found {})", origin,
         name, dtype_it == entry.end() ? std::string("nothing") : dtype_it->dump());
  }
  const std::string dtype_text = dtype_it->get<std::string>();
  if (dtype_text == "F32") {
    info.dtype = DType::kF32;
  } else if (dtype_text == "F16") {
    info.dtype = DType::kF16;
  } else if (dtype_text == "BF16") {
    info.dtype = DType::kBF16;
  } else if (std::find(std::begin(kKnownDtypes), std::end(kKnownDtypes), dtype_text) !=
             std::end(kKnownDtypes)) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" has unsupported dtype {}; conveyor reads F32/F16/BF16 (convert the "
         "checkpoint)",
         origin, name, dtype_text);
  } else {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" has unknown dtype \"{}\"; safetensors dtypes conveyor reads are "
         "F32/F16/BF16",
         origin, name, dtype_text);
  }

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" has no \"shape\" array (found {})", origin,
         name, shape_it == entry.end() ? std::string("nothing") : shape_it->dump());
  }
  uint64_t numel = 1;
  for (const json& dim : *shape_it) {
    std::optional<uint64_t> value = as_u64(dim);
    if (!value || *value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" has shape {} with dimension {}; dimensions must be non-negative "
           "integers",
           origin, name, shape_it->dump(), dim.dump());
    }
    if (!checked_mul(numel, *value, numel)) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" has shape {} whose element count overflows 64 bits", origin, name,
           shape_it->dump());
    }
    info.shape.push_back(static_cast<int64_t>(*value));
  }
  uint64_t n_bytes = 0;
  if (!checked_mul(numel, dtype_size(info.dtype), n_bytes) ||
      numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" has shape {} whose byte size overflows 64 bits", origin, name,
         shape_it->dump());
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" needs \"data_offsets\" as [begin, end] (found {})", origin, name,
         offsets_it == entry.end() ? std::string("nothing") : offsets_it->dump());
  }
  std::optional<uint64_t> begin = as_u64((*offsets_it)[0]);
  std::optional<uint64_t> end = as_u64((*offsets_it)[1]);
  if (!begin || !end) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" has data_offsets {}; offsets must be non-negative integers", origin,
         name, offsets_it->dump());
  }
  if (*begin > *end) {
    fail(ErrorCode::kModelFormat, "{}: tensor \"{}\" has data_offsets begin {} > end {}", origin,
         name, *begin, *end);
  }
  if (*end > data_size) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" has data_offsets end {} past the data section of {} bytes (the file "
         "is truncated or the header is wrong)",
         origin, name, *end, data_size);
  }
  if (*end - *begin != n_bytes) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" spans {} bytes but shape {} x {} ({} bytes each) needs {} bytes",
         origin, name, *end - *begin, shape_it->dump(), dtype_text, dtype_size(info.dtype),
         n_bytes);
  }
  info.data_begin = *begin;
  info.data_end = *end;
  return info;
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fail(ErrorCode::kModelFormat, "cannot open {}; check the file exists and is readable",
         path.string());
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A shard file name from an index: a plain file name inside the model directory.
void check_shard_name(const std::string& shard, const std::string& tensor,
                      const std::filesystem::path& index_path) {
  if (shard.empty() || shard.find('/') != std::string::npos ||
      shard.find('\\') != std::string::npos || shard.find("..") != std::string::npos ||
      shard.find('\0') != std::string::npos) {
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" maps to shard \"{}\", which is not a plain file name in the model "
         "directory (no path separators or \"..\" allowed)",
         index_path.string(), tensor, shard);
  }
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape)
    n *= dim;
  return n;
}

std::vector<TensorInfo> parse_safetensors(std::span<const std::byte> file,
                                          std::string_view origin) {
  if (file.size() < 8) {
    fail(ErrorCode::kModelFormat,
         "{}: file is {} bytes, shorter than the 8-byte header length every safetensors file "
         "starts with",
         origin, file.size());
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<uint64_t>(file[static_cast<std::size_t>(i)]);
  }
  const uint64_t available = file.size() - 8;
  if (header_size > kMaxHeaderBytes) {
    fail(ErrorCode::kModelFormat,
         "{}: header length {} exceeds the limit of {} bytes; this is not a safetensors file or "
         "it is corrupt",
         origin, header_size, kMaxHeaderBytes);
  }
  if (header_size > available) {
    fail(ErrorCode::kModelFormat,
         "{}: header length {} exceeds the {} bytes that follow it; the file is truncated or "
         "not safetensors",
         origin, header_size, available);
  }
  const char* header_begin = reinterpret_cast<const char*>(file.data() + 8);
  json header;
  try {
    header = json::parse(header_begin, header_begin + header_size);
  } catch (const json::parse_error& e) {
    fail(ErrorCode::kModelFormat, "{}: header is not valid JSON (byte {} of the header): {}",
         origin, e.byte, e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for a double
    fail(ErrorCode::kModelFormat, "{}: header is not valid JSON: {}", origin, e.what());
  }
  if (!header.is_object()) {
    fail(ErrorCode::kModelFormat, "{}: header must be a JSON object but is {}", origin,
         json_type_phrase(header));
  }

  const uint64_t data_size = available - header_size;
  std::vector<TensorInfo> tensors;
  tensors.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        fail(ErrorCode::kModelFormat, "{}: \"__metadata__\" must be an object of strings but is {}",
             origin, json_type_phrase(entry));
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail(ErrorCode::kModelFormat,
               "{}: \"__metadata__\" value for \"{}\" must be a string but is {}", origin, key,
               json_type_phrase(value));
        }
      }
      continue;
    }
    tensors.push_back(parse_entry(name, entry, data_size, origin));
  }

  // No two non-empty byte ranges may overlap.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors.size());
  for (const TensorInfo& info : tensors) {
    if (info.data_end > info.data_begin) by_offset.push_back(&info);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::pair(a->data_begin, a->data_end) < std::pair(b->data_begin, b->data_end);
  });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo& prev = *by_offset[i - 1];
    const TensorInfo& cur = *by_offset[i];
    if (cur.data_begin < prev.data_end) {
      fail(ErrorCode::kModelFormat,
           "{}: tensors \"{}\" [{}, {}) and \"{}\" [{}, {}) overlap in the data section", origin,
           prev.name, prev.data_begin, prev.data_end, cur.name, cur.data_begin, cur.data_end);
    }
  }

  std::sort(tensors.begin(), tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  return tensors;
}

// ---- SafeTensorsFile -------------------------------------------------------------------------

SafeTensorsFile SafeTensorsFile::open(const std::filesystem::path& path) {
  SafeTensorsFile file;
  file.path_ = path;
  file.map_ = std::make_shared<const MappedFile>(MappedFile::open(
      path, ".safetensors file", "check --model, or create a model with conveyor-make-model"));
  const std::span<const std::byte> bytes = file.map_->bytes();
  file.tensors_ = parse_safetensors(bytes, path.string());
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<uint64_t>(bytes[static_cast<std::size_t>(i)]);
  }
  file.data_offset_ = 8 + static_cast<std::size_t>(header_size);
  return file;
}

SafeTensorsFile::SafeTensorsFile(SafeTensorsFile&&) noexcept = default;
SafeTensorsFile& SafeTensorsFile::operator=(SafeTensorsFile&&) noexcept = default;
SafeTensorsFile::~SafeTensorsFile() = default;

uint64_t SafeTensorsFile::file_size() const {
  return map_ ? map_->size() : 0;
}

const TensorInfo* SafeTensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& info, std::string_view key) {
                               return std::string_view(info.name) < key;
                             });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::span<const std::byte> SafeTensorsFile::bytes(const TensorInfo& info) const {
  const std::size_t data_size = map_->size() - data_offset_;
  if (info.data_begin > info.data_end || info.data_end > data_size) {
    fail(ErrorCode::kInvalidArgument,
         "tensor \"{}\" range [{}, {}) is outside the {} data bytes of {}; was the TensorInfo "
         "taken from another file?",
         info.name, info.data_begin, info.data_end, data_size, path_.string());
  }
  return map_->bytes().subspan(data_offset_ + info.data_begin,
                               static_cast<std::size_t>(info.data_end - info.data_begin));
}

// ---- SafeTensors -----------------------------------------------------------------------------

struct SafeTensors::Impl {
  std::filesystem::path dir;
  // Single file: files[0], mapped at open. Sharded: one slot per shard, mapped on first use.
  std::vector<std::string> shard_names;
  std::vector<std::unique_ptr<SafeTensorsFile>> files;
  std::map<std::string, std::size_t, std::less<>> weight_map;  // tensor -> shard (sharded only)
  bool sharded = false;
  mutable std::mutex mutex;  // guards files[] slots while they are filled
  std::atomic<uint64_t> bytes_read{0};

  // locate, after checking the tensor's shape equals `expected_shape`.
  std::pair<const SafeTensorsFile*, const TensorInfo*> locate_checked(
      std::string_view name, std::span<const int64_t> expected_shape) {
    auto [file, info] = locate(name);
    if (!std::equal(info->shape.begin(), info->shape.end(), expected_shape.begin(),
                    expected_shape.end())) {
      fail(ErrorCode::kModelFormat,
           "tensor \"{}\" in {} has shape {} but config.json implies {}; the checkpoint does "
           "not match its config.json",
           name, file->path().string(), shape_string(info->shape), shape_string(expected_shape));
    }
    return {file, info};
  }

  // The file holding `name` and its entry; maps the shard on first use.
  std::pair<const SafeTensorsFile*, const TensorInfo*> locate(std::string_view name) {
    if (!sharded) {
      const SafeTensorsFile& file = *files[0];
      const TensorInfo* info = file.find(name);
      if (info == nullptr) {
        fail(ErrorCode::kModelFormat,
             "tensor \"{}\" is not in {} ({} tensors); the checkpoint does not match the "
             "architecture in config.json",
             name, file.path().string(), file.tensors().size());
      }
      return {&file, info};
    }
    auto it = weight_map.find(name);
    if (it == weight_map.end()) {
      fail(ErrorCode::kModelFormat,
           "tensor \"{}\" is not listed in {} ({} tensors); the checkpoint does not match the "
           "architecture in config.json",
           name, (dir / kIndexFileName).string(), weight_map.size());
    }
    const std::size_t shard = it->second;
    const SafeTensorsFile* file = nullptr;
    {
      std::lock_guard lock(mutex);
      if (!files[shard]) {
        files[shard] =
            std::make_unique<SafeTensorsFile>(SafeTensorsFile::open(dir / shard_names[shard]));
      }
      file = files[shard].get();
    }
    const TensorInfo* info = file->find(name);
    if (info == nullptr) {
      fail(ErrorCode::kModelFormat,
           "{} lists tensor \"{}\" in shard {}, but that shard does not contain it; the index and "
           "the shards are out of sync",
           (dir / kIndexFileName).string(), name, shard_names[shard]);
    }
    return {file, info};
  }
};

SafeTensors::SafeTensors(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafeTensors::SafeTensors(SafeTensors&&) noexcept = default;
SafeTensors& SafeTensors::operator=(SafeTensors&&) noexcept = default;
SafeTensors::~SafeTensors() = default;

SafeTensors SafeTensors::open(const std::filesystem::path& model_dir) {
  auto impl = std::make_unique<Impl>();
  impl->dir = model_dir;
  std::error_code ec;
  if (!std::filesystem::is_directory(model_dir, ec)) {
    fail(ErrorCode::kModelFormat,
         "model directory {} does not exist or is not a directory; check --model, or create a "
         "model with conveyor-make-model",
         model_dir.string());
  }
  const std::filesystem::path index_path = model_dir / kIndexFileName;
  if (std::filesystem::exists(index_path, ec)) {
    impl->sharded = true;
    json index;
    try {
      index = json::parse(read_text_file(index_path));
    } catch (const json::parse_error& e) {
      fail(ErrorCode::kModelFormat, "{}: malformed JSON at byte {}: {}", index_path.string(),
           e.byte, e.what());
    } catch (const json::exception& e) {
      fail(ErrorCode::kModelFormat, "{}: malformed JSON: {}", index_path.string(), e.what());
    }
    auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    if (map_it == index.end() || !map_it->is_object()) {
      fail(ErrorCode::kModelFormat,
           "{}: needs a \"weight_map\" object of tensor name -> shard file name",
           index_path.string());
    }
    std::map<std::string, std::size_t, std::less<>> shard_ids;
    for (const auto& [tensor, shard_value] : map_it->items()) {
      if (!shard_value.is_string()) {
        fail(ErrorCode::kModelFormat,
             "{}: weight_map entry for \"{}\" must be a shard file name but is {}",
             index_path.string(), tensor, json_type_phrase(shard_value));
      }
      const std::string shard = shard_value.get<std::string>();
      check_shard_name(shard, tensor, index_path);
      auto [it, inserted] = shard_ids.try_emplace(shard, impl->shard_names.size());
      if (inserted) {
        const std::filesystem::path shard_path = model_dir / shard;
        if (!std::filesystem::is_regular_file(shard_path, ec)) {
          fail(ErrorCode::kModelFormat,
               "{} lists shard {} (for tensor \"{}\"), but {} is missing; the checkpoint is "
               "incomplete",
               index_path.string(), shard, tensor, shard_path.string());
        }
        impl->shard_names.push_back(shard);
      }
      impl->weight_map.emplace(tensor, it->second);
    }
    impl->files.resize(impl->shard_names.size());
    return SafeTensors(std::move(impl));
  }
  const std::filesystem::path single = model_dir / kSingleFileName;
  if (!std::filesystem::exists(single, ec)) {
    fail(ErrorCode::kModelFormat,
         "model directory {} has neither {} nor {}; check --model, or create a model with "
         "conveyor-make-model",
         model_dir.string(), kSingleFileName, kIndexFileName);
  }
  impl->shard_names.emplace_back(kSingleFileName);
  impl->files.push_back(std::make_unique<SafeTensorsFile>(SafeTensorsFile::open(single)));
  return SafeTensors(std::move(impl));
}

bool SafeTensors::contains(std::string_view name) const {
  if (impl_->sharded) return impl_->weight_map.find(name) != impl_->weight_map.end();
  return impl_->files[0]->find(name) != nullptr;
}

TensorInfo SafeTensors::info(std::string_view name) const {
  return *impl_->locate(name).second;
}

std::optional<StoredTensor> SafeTensors::stored(std::string_view name,
                                                std::span<const int64_t> expected_shape,
                                                DType dtype) const {
  auto [file, info] = impl_->locate_checked(name, expected_shape);
  const std::span<const std::byte> bytes = file->bytes(*info);
  std::optional<StoredTensor> tensor = tensor_in_place(bytes, info->dtype, dtype, file->mapping());
  if (tensor) impl_->bytes_read += bytes.size();
  return tensor;
}

std::vector<float> SafeTensors::load_f32(std::string_view name,
                                         std::span<const int64_t> expected_shape) const {
  auto [file, info] = impl_->locate_checked(name, expected_shape);
  std::span<const std::byte> bytes = file->bytes(*info);
  impl_->bytes_read += bytes.size();
  const std::size_t numel = static_cast<std::size_t>(info->numel());
  std::vector<float> out(numel);
  // The data may sit at any byte offset, so every read goes through memcpy.
  switch (info->dtype) {
    case DType::kF32:
      std::copy_n(bytes.data(), numel * sizeof(float), reinterpret_cast<std::byte*>(out.data()));
      break;
    case DType::kF16:
      for (std::size_t i = 0; i < numel; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, sizeof h);
        out[i] = f16_to_f32(h);
      }
      break;
    case DType::kBF16:
      for (std::size_t i = 0; i < numel; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, sizeof h);
        out[i] = bf16_to_f32(h);
      }
      break;
  }
  return out;
}

uint64_t SafeTensors::bytes_read() const {
  return impl_->bytes_read.load();
}

std::size_t SafeTensors::n_mapped_files() const {
  std::lock_guard lock(impl_->mutex);
  return static_cast<std::size_t>(std::count_if(impl_->files.begin(), impl_->files.end(),
                                                [](const auto& f) { return f != nullptr; }));
}

}  // namespace conveyor
