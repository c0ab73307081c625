// ModelConfig: the shape and math options of a Llama-family model, read from a Hugging Face
// config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/dtype.hpp"

namespace conveyor {

enum class Architecture { kLlama, kMistral, kQwen2 };

// Hugging Face architecture name, e.g. "LlamaForCausalLM".
std::string_view architecture_name(Architecture arch) noexcept;

// kFrequencyFactors: one divisor per rotated pair, as GGUF stores Llama-3.1 scaling (the
// rope_freqs.weight tensor); config.json cannot express it.
enum class RopeScalingType { kNone, kLinear, kLlama3, kFrequencyFactors };

// rope_scaling of config.json. Only the fields of the active type are meaningful.
struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                              // linear and llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
  std::vector<double> frequency_factors;            // [head_dim / 2]: inv_freq[i] /= factors[i]
};

class GgufFile;

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t n_layers = 0;    // num_hidden_layers
  int64_t n_heads = 0;     // num_attention_heads
  int64_t n_kv_heads = 0;  // num_key_value_heads (defaults to n_heads)
  int64_t head_dim = 0;    // head_dim (defaults to hidden_size / n_heads)
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2 always does)
  // Mistral/Qwen2 sliding window; the engine refuses contexts longer than it rather than
  // computing full attention where the model expects a window.
  std::optional<int64_t> sliding_window;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be a number or a list
  DType torch_dtype = DType::kF32;     // dtype the checkpoint declares

  // Parses config.json text. `origin` names the source in error messages (a path). Throws
  // conveyor::Error(kModelFormat) for malformed JSON, missing or ill-typed fields, an unknown
  // architecture, or any field that changes the math in a way conveyor does not implement
  // (hidden_act other than silu, mlp_bias, unknown rope_scaling types, ...).
  static ModelConfig from_json(std::string_view json_text, std::string_view origin = "config.json");
  // Reads the metadata of a GGUF file (architectures llama and qwen2; docs/gguf.md lists the
  // keys). Throws conveyor::Error(kModelFormat) naming the key for missing or ill-typed keys,
  // other architectures, and anything that changes the math without an implementation (mixture
  // of experts, yarn rope scaling, ...).
  static ModelConfig from_gguf(const GgufFile& file);
  // Reads `<model_dir>/config.json`, the file itself when a path to a .json file is given, or
  // the metadata of a GGUF model (a .gguf file, or a directory holding one and no config.json).
  static ModelConfig load(const std::filesystem::path& path);

  // Hugging Face config.json text for this config (what conveyor-make-model writes). Throws
  // kInvalidArgument for frequency-factor rope scaling, which config.json cannot express.
  std::string to_json() const;

  // Checks internal consistency (positive sizes, n_heads % n_kv_heads == 0, even head_dim...).
  void validate() const;

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  // Parameters of one decoder layer and of the whole model (lm_head counted once when tied).
  int64_t layer_params() const;
  int64_t n_params() const;
};

}  // namespace conveyor
