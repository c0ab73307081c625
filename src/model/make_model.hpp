// conveyor-make-model as a library: model presets, command-line overrides and deterministic
// random checkpoints (config.json + safetensors, single file or sharded).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"

namespace conveyor {

// "tiny" (~0.9M parameters, for tests) or "small" (~125M, for benchmarks). Throws
// conveyor::Error(kInvalidArgument) naming the presets for any other name.
ModelConfig preset_config(std::string_view name);

// Changes applied to a preset or to a config.json's shape.
struct ConfigOverrides {
  // Default initializers keep designated initialization ({.n_layers = 2}) free of
  // -Wmissing-field-initializers.
  std::optional<Architecture> architecture = {};  // also sets attention_bias (Qwen2 only)
  std::optional<int64_t> n_layers = {};
  std::optional<int64_t> vocab_size = {};
  std::optional<bool> tie_word_embeddings = {};
  std::optional<RopeScaling> rope_scaling = {};
};
void apply_overrides(ModelConfig& config, const ConfigOverrides& overrides);

// "llama", "mistral", "qwen2".
Architecture parse_architecture_flag(std::string_view text);
// "none", "llama3" (factor 8, low 1, high 4, original 8192) or "linear:FACTOR".
RopeScaling parse_rope_scaling_flag(std::string_view text);

struct MakeModelOptions {
  ModelConfig config;
  DType dtype = DType::kF32;  // on-disk dtype; also written as torch_dtype
  uint64_t seed = 0;
  std::filesystem::path out_dir;
  // 0: one model.safetensors. > 0: model-0000k-of-0000n.safetensors shards of at most this many
  // data bytes (a tensor larger than the limit gets a shard of its own) and an index.
  int64_t shard_max_bytes = 0;

  void validate() const;
};

struct MakeModelResult {
  int64_t n_params = 0;
  uint64_t data_bytes = 0;                   // bytes of tensor data over all files
  std::vector<std::filesystem::path> files;  // config.json, index (when sharded), safetensors
};

// One tensor of a checkpoint and how make_model draws it: mean + std * N(0, 1).
struct TensorRecipe {
  std::string name;
  std::vector<int64_t> shape;
  double mean = 0.0;
  double std = 1.0;
};

// Every tensor of `config` in model order (embedding, layers, final norm, lm_head).
std::vector<TensorRecipe> model_tensor_recipes(const ModelConfig& config);

// Deterministic values of one tensor: the same (seed, name) gives the same floats on every
// platform and compiler, whichever other tensors are drawn (the stream is seeded from the seed
// and an FNV-1a hash of the name).
std::vector<float> generate_tensor(const TensorRecipe& recipe, uint64_t seed);

// 64-bit FNV-1a of the bytes of `text`.
uint64_t fnv1a_64(std::string_view text) noexcept;

// Writes config.json and the weights under options.out_dir (created when missing). Earlier
// model files there (config.json, model.safetensors, shards, index) are replaced; other files
// are left alone.
MakeModelResult make_model(const MakeModelOptions& options);

}  // namespace conveyor
