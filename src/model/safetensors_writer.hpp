// SafeTensorsWriter: writes fp32 values as a valid .safetensors file in F32, F16 or BF16
// (sorted names, contiguous data, header padded to 8 bytes, "__metadata__": {"format": "pt"}).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "conveyor/checkpoint.hpp"
#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"

namespace conveyor {

class SafeTensorsWriter {
 public:
  // Produces a tensor's fp32 values when the file is written, so a writer can describe a large
  // model without holding it in memory. Must return exactly numel(shape) values.
  using Producer = std::function<std::vector<float>()>;

  // Adds a tensor stored as `dtype`. Throws conveyor::Error(kInvalidArgument) for an empty or
  // duplicate name, "__metadata__", a negative dimension, or data.size() != numel(shape).
  void add(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<float> data);
  void add(std::string name, DType dtype, std::vector<int64_t> shape, Producer produce);

  std::size_t size() const { return tensors_.size(); }
  // Bytes of the data section (sum of numel * dtype size).
  uint64_t data_bytes() const;

  // The whole file image.
  std::vector<std::byte> serialize() const;
  // Writes the file through `<path>.tmp` and a rename, so readers never see half a file.
  // Throws conveyor::Error(kInvalidArgument) naming the path when it cannot be written.
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    uint64_t numel = 0;
    Producer produce;
  };
  // Header bytes (8-byte length + padded JSON) and the entries in name order.
  std::string header_bytes(std::vector<const Entry*>& order) const;
  static void encode(const Entry& entry, std::vector<std::byte>& out);

  std::vector<Entry> tensors_;
};

// Writes `config` as config.json and every tensor of the model (read from `tensors` by Hugging
// Face name) into `dir`/model.safetensors as `dtype`: e.g. a GGUF checkpoint exported as the
// equivalent Hugging Face directory. Creates `dir` when missing. Throws kInvalidArgument for a
// config that config.json cannot express (GGUF rope frequency factors).
void write_safetensors_model(const ModelConfig& config, const TensorSource& tensors, DType dtype,
                             const std::filesystem::path& dir);

}  // namespace conveyor
