// SafeTensorsWriter: fp32 -> F32/F16/BF16 encoding and the safetensors file layout.
#include "model/safetensors_writer.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/check.hpp"
#include "core/dtype_convert.hpp"
#include "core/file_io.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

uint64_t checked_numel(const std::string& name, const std::vector<int64_t>& shape) {
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) {
      fail(ErrorCode::kInvalidArgument, "tensor \"{}\" has negative dimension {}", name, dim);
    }
    const auto d = static_cast<uint64_t>(dim);
    if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / 4 / d) {
      fail(ErrorCode::kInvalidArgument, "tensor \"{}\" is too large: its byte size overflows",
           name);
    }
    numel *= d;
  }
  return numel;
}

}  // namespace

void SafeTensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::vector<float> data) {
  const uint64_t numel = checked_numel(name, shape);
  if (data.size() != numel) {
    fail(ErrorCode::kInvalidArgument, "tensor \"{}\" has {} values but its shape holds {}", name,
         data.size(), numel);
  }
  add(std::move(name), dtype, std::move(shape),
      Producer([values = std::move(data)] { return values; }));
}

void SafeTensorsWriter::add(std::string name, DType dtype, std::vector<int64_t> shape,
                            Producer produce) {
  if (name.empty() || name == "__metadata__") {
    fail(ErrorCode::kInvalidArgument,
         "tensor name \"{}\" is reserved or empty; pick a non-empty name other than "
         "__metadata__",
         name);
  }
  for (const Entry& entry : tensors_) {
    if (entry.name == name) {
      fail(ErrorCode::kInvalidArgument, "tensor \"{}\" was added twice; names must be unique",
           name);
    }
  }
  Entry entry;
  entry.numel = checked_numel(name, shape);
  entry.name = std::move(name);
  entry.dtype = dtype;
  entry.shape = std::move(shape);
  entry.produce = std::move(produce);
  tensors_.push_back(std::move(entry));
}

uint64_t SafeTensorsWriter::data_bytes() const {
  uint64_t total = 0;
  for (const Entry& entry : tensors_)
    total += entry.numel * dtype_size(entry.dtype);
  return total;
}

std::string SafeTensorsWriter::header_bytes(std::vector<const Entry*>& order) const {
  order.clear();
  for (const Entry& entry : tensors_)
    order.push_back(&entry);
  std::sort(order.begin(), order.end(),
            [](const Entry* a, const Entry* b) { return a->name < b->name; });

  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const Entry* entry : order) {
    const uint64_t end = offset + entry->numel * dtype_size(entry->dtype);
    header[entry->name] = {{"dtype", std::string(dtype_name(entry->dtype))},
                           {"shape", entry->shape},
                           {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string json = header.dump();
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json;
}

void SafeTensorsWriter::encode(const Entry& entry, std::vector<std::byte>& out) {
  const std::vector<float> values = entry.produce();
  if (values.size() != entry.numel) {
    fail(ErrorCode::kInvalidArgument,
         "tensor \"{}\" producer returned {} values but the shape holds {}", entry.name,
         values.size(), entry.numel);
  }
  out.resize(values.size() * dtype_size(entry.dtype));
  switch (entry.dtype) {
    case DType::kF32:
      std::copy_n(reinterpret_cast<const std::byte*>(values.data()), out.size(), out.data());
      break;
    case DType::kF16:
      for (std::size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = f32_to_f16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, sizeof h);
      }
      break;
    case DType::kBF16:
      for (std::size_t i = 0; i < values.size(); ++i) {
        const uint16_t h = f32_to_bf16(values[i]);
        std::memcpy(out.data() + 2 * i, &h, sizeof h);
      }
      break;
  }
}

std::vector<std::byte> SafeTensorsWriter::serialize() const {
  std::vector<const Entry*> order;
  const std::string header = header_bytes(order);
  std::vector<std::byte> file(header.size());
  std::memcpy(file.data(), header.data(), header.size());
  std::vector<std::byte> data;
  for (const Entry* entry : order) {
    encode(*entry, data);
    file.insert(file.end(), data.begin(), data.end());
  }
  return file;
}

void SafeTensorsWriter::write(const std::filesystem::path& path) const {
  write_file_atomically(path, [&](std::ostream& out) {
    std::vector<const Entry*> order;
    const std::string header = header_bytes(order);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::vector<std::byte> data;
    for (const Entry* entry : order) {
      encode(*entry, data);
      out.write(reinterpret_cast<const char*>(data.data()),
                static_cast<std::streamsize>(data.size()));
    }
  });
}

void write_safetensors_model(const ModelConfig& config, const TensorSource& tensors, DType dtype,
                             const std::filesystem::path& dir) {
  const std::string config_json = config.to_json();  // refuses what config.json cannot hold
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    fail(ErrorCode::kInvalidArgument, "cannot create {}: {}", dir.string(), ec.message());
  }
  const StageWeightsSpec whole{
      .first_layer = 0, .last_layer = config.n_layers, .embedding = true, .head = true};
  std::vector<std::string> names = required_tensor_names(config, whole);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  SafeTensorsWriter writer;
  for (const std::string& name : names) {
    const std::vector<int64_t> shape = tensor_shape(config, name);
    writer.add(name, dtype, shape, SafeTensorsWriter::Producer([&tensors, name, shape] {
                 return tensors.load_f32(name, shape);
               }));
  }
  writer.write(dir / "model.safetensors");
  write_file(dir / "config.json", config_json, "config.json");
}

}  // namespace conveyor
