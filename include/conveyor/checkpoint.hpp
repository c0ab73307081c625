// Checkpoint: a model on disk — a Hugging Face directory (config.json + *.safetensors) or a
// GGUF file — as one ModelConfig and tensors by Hugging Face name, converted to fp32.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"

namespace conveyor {

// A tensor's values where the file holds them: no copy, valid while `keep_alive` is held.
struct StoredTensor {
  std::span<const std::byte> bytes;        // numel values of the requested dtype, aligned for it
  std::shared_ptr<const void> keep_alive;  // the file's mapping
  // A Llama query or key (weight or bias) whose rows are in llama.cpp's GGUF order rather than
  // Hugging Face's: within each head, rows (i, i + head_dim/2) — a RoPE pair — sit at (2i, 2i+1).
  // q.k is the same sum in another order, so a backend that rotates adjacent pairs can use it;
  // one that cannot calls load_f32, which returns Hugging Face order.
  bool rope_pairs_adjacent = false;
};

// Tensors by Hugging Face name ("model.layers.3.self_attn.q_proj.weight"), row-major, in
// Hugging Face orientation, converted to fp32. Thread-safe for reads.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool contains(std::string_view name) const = 0;
  // The tensor's values after checking its shape equals `expected_shape`; the error names the
  // tensor, both shapes and the file.
  virtual std::vector<float> load_f32(std::string_view name,
                                      std::span<const int64_t> expected_shape) const = 0;
  // The tensor's values in place, when the file stores them as a backend computing in `dtype`
  // (kF32 or kBF16) needs: that dtype, aligned, in Hugging Face layout or, for a query or key,
  // flagged rope_pairs_adjacent. nullopt otherwise (load_f32 converts). Checks the shape as
  // load_f32 does; the pages are read in before it returns, so the first step does not pay for
  // them.
  virtual std::optional<StoredTensor> stored(std::string_view name,
                                             std::span<const int64_t> expected_shape,
                                             DType dtype) const = 0;
  // Bytes read from the files so far (for load statistics).
  virtual uint64_t bytes_read() const = 0;
};

enum class CheckpointFormat { kSafetensors, kGguf };

// Where a --model path leads: a directory with config.json (safetensors), a .gguf file, or a
// directory holding exactly one .gguf (and no config.json).
struct ModelLocation {
  CheckpointFormat format = CheckpointFormat::kSafetensors;
  std::filesystem::path path;  // the directory (safetensors) or the .gguf file
};

// Throws conveyor::Error(kInvalidArgument) naming the path and what was found when it is none of
// the above (missing, an empty directory, several .gguf files, ...).
ModelLocation locate_model(const std::filesystem::path& path);

struct Checkpoint {
  ModelLocation location;
  ModelConfig config;
  std::unique_ptr<TensorSource> tensors;
  // "safetensors, 1 file, BF16" or "GGUF v3, 272 tensors: 210 Q4_1, 61 F32, 1 Q8_0".
  std::string description;
  uint64_t file_bytes = 0;  // on disk

  // Opens the model at `path` (see locate_model): reads and validates the config, the tensor
  // table and, for GGUF, that every tensor the config implies is present with its shape and a
  // supported type. Throws conveyor::Error(kModelFormat) naming the file and the problem.
  static Checkpoint open(const std::filesystem::path& path);
};

}  // namespace conveyor
