// GGUF metadata -> ModelConfig, Hugging Face <-> GGUF tensor names, the Q/K un-permutation, the
// model-level tensor checks and GgufTensors (dequantizing TensorSource). Sources of each rule:
// docs/gguf.md.
#include "model/gguf_model.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "core/check.hpp"
#include "model/ggml_quants.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

constexpr std::string_view kSupportedGgufArchitectures = "llama (Llama, Mistral, SmolLM), qwen2";

// Hugging Face suffix after "model.layers.N." -> GGUF suffix after "blk.N.".
constexpr std::pair<std::string_view, std::string_view> kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

constexpr std::string_view kRopeFreqs = "rope_freqs.weight";

std::string shape_string(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Parses "blk.N." at the start of `name`; returns N and the rest.
std::optional<std::pair<int64_t, std::string_view>> split_block(std::string_view name) {
  constexpr std::string_view kPrefix = "blk.";
  if (!name.starts_with(kPrefix)) return std::nullopt;
  name.remove_prefix(kPrefix.size());
  const size_t dot = name.find('.');
  if (dot == 0 || dot == std::string_view::npos) return std::nullopt;
  int64_t layer = 0;
  const auto [end, ec] = std::from_chars(name.data(), name.data() + dot, layer);
  if (ec != std::errc() || end != name.data() + dot) return std::nullopt;
  return std::pair{layer, name.substr(dot + 1)};
}

// Whether a Hugging Face name is a query or key projection (weight or bias).
bool is_query_or_key(std::string_view hf_name) {
  return hf_name.ends_with("self_attn.q_proj.weight") ||
         hf_name.ends_with("self_attn.q_proj.bias") ||
         hf_name.ends_with("self_attn.k_proj.weight") || hf_name.ends_with("self_attn.k_proj.bias");
}

// Reads metadata keys of one architecture ("llama.block_count"), naming the key in errors.
class MetadataReader {
 public:
  MetadataReader(const GgufContents& contents, std::string arch)
      : c_(contents), prefix_(std::move(arch) + ".") {}

  std::string key(std::string_view name) const { return prefix_ + std::string(name); }

  int64_t required_int(std::string_view name) const {
    const std::string k = key(name);
    const std::optional<int64_t> value = c_.get_int(k);
    if (!value) {
      fail(ErrorCode::kModelFormat, "{}: missing required metadata \"{}\"; a {} GGUF has it",
           c_.origin, k, prefix_.substr(0, prefix_.size() - 1));
    }
    return *value;
  }
  std::optional<int64_t> optional_int(std::string_view name) const { return c_.get_int(key(name)); }
  std::optional<double> optional_float(std::string_view name) const {
    return c_.get_float(key(name));
  }
  std::optional<std::string> optional_string(std::string_view name) const {
    return c_.get_string(key(name));
  }
  bool has(std::string_view name) const { return c_.find(key(name)) != nullptr; }

 private:
  const GgufContents& c_;
  std::string prefix_;
};

// Keys whose presence means math conveyor does not implement.
void refuse_unimplemented(const GgufContents& c, const MetadataReader& meta) {
  if (const auto experts = meta.optional_int("expert_count"); experts && *experts > 0) {
    fail(ErrorCode::kModelFormat,
         "{}: {} = {}: mixture-of-experts models are not implemented; conveyor runs dense "
         "Llama-family models",
         c.origin, meta.key("expert_count"), *experts);
  }
  if (meta.has("attention.layer_norm_epsilon")) {
    fail(ErrorCode::kModelFormat,
         "{}: {} means LayerNorm, which is not implemented; conveyor implements RMSNorm "
         "(attention.layer_norm_rms_epsilon)",
         c.origin, meta.key("attention.layer_norm_epsilon"));
  }
  for (std::string_view name : {"attn_logit_softcapping", "final_logit_softcapping",
                                "attention.sliding_window_pattern", "logit_scale"}) {
    if (meta.has(name)) {
      fail(ErrorCode::kModelFormat,
           "{}: {} is set, which changes the math in a way conveyor does not implement", c.origin,
           meta.key(name));
    }
  }
  if (const auto attn = meta.optional_float("rope.scaling.attn_factor"); attn && *attn != 1.0) {
    fail(ErrorCode::kModelFormat,
         "{}: {} = {} is not implemented (it scales attention for yarn-style rope scaling)",
         c.origin, meta.key("rope.scaling.attn_factor"), *attn);
  }
}

RopeScaling read_rope_scaling(const GgufFile& file, const MetadataReader& meta, int64_t head_dim) {
  const GgufContents& c = file.contents();
  RopeScaling scaling;
  const std::optional<std::string> type = meta.optional_string("rope.scaling.type");
  std::optional<double> factor = meta.optional_float("rope.scaling.factor");
  if (!factor) factor = meta.optional_float("rope.scale_linear");  // older files
  if (type && *type != "none" && *type != "linear") {
    fail(ErrorCode::kModelFormat,
         "{}: {} = \"{}\" is not implemented (it changes the rotary embedding math); conveyor "
         "supports none, linear and Llama-3.1 frequency factors",
         c.origin, meta.key("rope.scaling.type"), *type);
  }
  if ((type == "linear" || !type) && factor && *factor != 1.0) {
    scaling.type = RopeScalingType::kLinear;
    scaling.factor = *factor;
  } else if (type == "linear" && !factor) {
    fail(ErrorCode::kModelFormat, "{}: {} is linear but {} is missing", c.origin,
         meta.key("rope.scaling.type"), meta.key("rope.scaling.factor"));
  }
  if (const GgufTensorInfo* freqs = c.find_tensor(kRopeFreqs)) {
    if (scaling.type != RopeScalingType::kNone) {
      fail(ErrorCode::kModelFormat,
           "{}: both {} and linear rope scaling are given; conveyor does not combine them",
           c.origin, kRopeFreqs);
    }
    if (freqs->type != static_cast<uint32_t>(GgmlType::kF32) || freqs->ne.size() != 1 ||
        freqs->ne[0] != head_dim / 2) {
      fail(ErrorCode::kModelFormat, "{}: {} must be F32 of shape [{}] (head_dim / 2) but is {} {}",
           c.origin, kRopeFreqs, head_dim / 2, ggml_type_name(freqs->type),
           shape_string(freqs->shape()));
    }
    std::vector<float> values(static_cast<size_t>(freqs->numel()));
    dequantize_row(freqs->type, file.bytes(*freqs), values);
    scaling.type = RopeScalingType::kFrequencyFactors;
    scaling.frequency_factors.assign(values.begin(), values.end());
  }
  return scaling;
}

int64_t vocab_size_of(const GgufContents& c, const MetadataReader& meta) {
  if (const auto n = meta.optional_int("vocab_size")) return *n;
  if (const GgufValue* tokens = c.find("tokenizer.ggml.tokens");
      tokens != nullptr && tokens->type == GgufType::kArray) {
    return static_cast<int64_t>(tokens->array.count);
  }
  if (const GgufTensorInfo* embd = c.find_tensor("token_embd.weight");
      embd && embd->ne.size() == 2) {
    return embd->ne[1];
  }
  fail(ErrorCode::kModelFormat,
       "{}: the vocabulary size is unknown: no {}, no tokenizer.ggml.tokens and no "
       "token_embd.weight",
       c.origin, meta.key("vocab_size"));
}

std::optional<int64_t> special_id(const GgufContents& c, std::string_view key, int64_t vocab) {
  const std::optional<int64_t> id = c.get_int(key);
  if (id && (*id < 0 || *id >= vocab)) {
    fail(ErrorCode::kModelFormat, "{}: {} = {} is outside the vocabulary [0, {})", c.origin, key,
         *id, vocab);
  }
  return id;
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GgufFile& file) {
  const GgufContents& c = file.contents();
  const std::optional<std::string> arch = c.get_string("general.architecture");
  if (!arch) {
    fail(ErrorCode::kModelFormat,
         "{}: metadata \"general.architecture\" is missing, so the model type is unknown; "
         "supported: {}",
         c.origin, kSupportedGgufArchitectures);
  }
  ModelConfig config;
  if (*arch == "llama") {
    config.architecture = Architecture::kLlama;
  } else if (*arch == "qwen2") {
    config.architecture = Architecture::kQwen2;
    config.attention_bias = true;
  } else {
    fail(ErrorCode::kModelFormat, "{}: GGUF architecture \"{}\" is not supported; supported: {}",
         c.origin, *arch, kSupportedGgufArchitectures);
  }
  const MetadataReader meta(c, *arch);
  refuse_unimplemented(c, meta);

  config.n_layers = meta.required_int("block_count");
  config.hidden_size = meta.required_int("embedding_length");
  config.intermediate_size = meta.required_int("feed_forward_length");
  config.n_heads = meta.required_int("attention.head_count");
  config.n_kv_heads = meta.optional_int("attention.head_count_kv").value_or(config.n_heads);
  config.max_position_embeddings = meta.required_int("context_length");
  const std::optional<double> eps = meta.optional_float("attention.layer_norm_rms_epsilon");
  if (!eps) {
    fail(ErrorCode::kModelFormat, "{}: missing required metadata \"{}\"", c.origin,
         meta.key("attention.layer_norm_rms_epsilon"));
  }
  // Stored as f32: 1e-5 arrives as 9.99999974738e-06, which is the value llama.cpp uses too.
  config.rms_norm_eps = *eps;
  config.rope_theta = meta.optional_float("rope.freq_base").value_or(10000.0);

  if (const auto key_length = meta.optional_int("attention.key_length")) {
    const int64_t value_length = meta.optional_int("attention.value_length").value_or(*key_length);
    if (value_length != *key_length) {
      fail(ErrorCode::kModelFormat,
           "{}: {} = {} differs from {} = {}; conveyor needs equal key and value head sizes",
           c.origin, meta.key("attention.key_length"), *key_length,
           meta.key("attention.value_length"), value_length);
    }
    config.head_dim = *key_length;
  } else {
    if (config.n_heads <= 0 || config.hidden_size % config.n_heads != 0) {
      fail(ErrorCode::kModelFormat,
           "{}: {} = {} is not a positive divisor of {} = {}, and no {} gives the head size",
           c.origin, meta.key("attention.head_count"), config.n_heads, meta.key("embedding_length"),
           config.hidden_size, meta.key("attention.key_length"));
    }
    config.head_dim = config.hidden_size / config.n_heads;
  }
  if (const auto rot = meta.optional_int("rope.dimension_count"); rot && *rot != config.head_dim) {
    fail(ErrorCode::kModelFormat,
         "{}: {} = {} rotates part of each head (head_dim {}); partial rotary embeddings are not "
         "implemented",
         c.origin, meta.key("rope.dimension_count"), *rot, config.head_dim);
  }
  if (config.head_dim <= 0 || config.head_dim % 2 != 0) {
    fail(ErrorCode::kModelFormat, "{}: head_dim {} must be positive and even", c.origin,
         config.head_dim);
  }
  config.rope_scaling = read_rope_scaling(file, meta, config.head_dim);
  if (const auto window = meta.optional_int("attention.sliding_window")) {
    // Mistral checkpoints convert to the llama architecture; the window is what tells them apart.
    if (config.architecture == Architecture::kLlama) config.architecture = Architecture::kMistral;
    config.sliding_window = *window;
  }
  config.vocab_size = vocab_size_of(c, meta);
  if (const GgufValue* tokens = c.find("tokenizer.ggml.tokens");
      tokens != nullptr && tokens->type == GgufType::kArray &&
      static_cast<int64_t>(tokens->array.count) > config.vocab_size) {
    fail(ErrorCode::kModelFormat,
         "{}: tokenizer.ggml.tokens holds {} tokens but the model has {} vocabulary rows; ids "
         "past the embedding would have no weights",
         c.origin, tokens->array.count, config.vocab_size);
  }
  config.tie_word_embeddings = c.find_tensor("output.weight") == nullptr;
  config.bos_token_id = special_id(c, "tokenizer.ggml.bos_token_id", config.vocab_size);
  for (std::string_view key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                               "tokenizer.ggml.eom_token_id"}) {
    if (const auto id = special_id(c, key, config.vocab_size)) {
      if (std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), *id) ==
          config.eos_token_ids.end()) {
        config.eos_token_ids.push_back(*id);
      }
    }
  }
  switch (c.get_int("general.file_type").value_or(0)) {
    case 1:
      config.torch_dtype = DType::kF16;
      break;
    case 32:
      config.torch_dtype = DType::kBF16;
      break;
    default:
      config.torch_dtype = DType::kF32;  // F32, or quantized: conveyor computes in fp32
      break;
  }
  try {
    config.validate();
  } catch (const Error& e) {
    fail(ErrorCode::kModelFormat, "{}: {}", c.origin, e.what());
  }
  return config;
}

std::optional<std::string> gguf_tensor_name(std::string_view hf_name) {
  if (hf_name == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf_name == "model.norm.weight") return "output_norm.weight";
  if (hf_name == "lm_head.weight") return "output.weight";
  constexpr std::string_view kPrefix = "model.layers.";
  if (!hf_name.starts_with(kPrefix)) return std::nullopt;
  std::string_view rest = hf_name.substr(kPrefix.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const std::string_view layer = rest.substr(0, dot);
  const std::string_view suffix = rest.substr(dot + 1);
  for (const auto& [hf, gguf] : kLayerNames) {
    if (suffix == hf) return fmt::format("blk.{}.{}", layer, gguf);
  }
  return std::nullopt;
}

namespace {

// Moves whole rows between Hugging Face order (h*D + s*D/2 + i) and llama.cpp's interleaved
// order (h*D + 2i + s), D = rows / n_heads, in the direction asked.
void move_qk_rows(std::span<float> values, int64_t rows, int64_t cols, int64_t n_heads,
                  bool to_hugging_face) {
  CONVEYOR_ASSERT(n_heads > 0 && rows % n_heads == 0 && (rows / n_heads) % 2 == 0);
  CONVEYOR_ASSERT(static_cast<int64_t>(values.size()) == rows * cols);
  const int64_t head_dim = rows / n_heads;
  const int64_t half = head_dim / 2;
  const std::vector<float> source(values.begin(), values.end());
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = h * head_dim + s * half + i;
        const int64_t gguf_row = h * head_dim + 2 * i + s;
        const int64_t from = to_hugging_face ? gguf_row : hf_row;
        const int64_t to = to_hugging_face ? hf_row : gguf_row;
        std::copy_n(source.begin() + from * cols, cols, values.begin() + to * cols);
      }
    }
  }
}

}  // namespace

void unpermute_qk_rows(std::span<float> values, int64_t rows, int64_t cols, int64_t n_heads) {
  move_qk_rows(values, rows, cols, n_heads, /*to_hugging_face=*/true);
}

void permute_qk_rows(std::span<float> values, int64_t rows, int64_t cols, int64_t n_heads) {
  move_qk_rows(values, rows, cols, n_heads, /*to_hugging_face=*/false);
}

void check_gguf_tensors(const GgufFile& file, const ModelConfig& config) {
  const GgufContents& c = file.contents();
  std::set<std::string, std::less<>> expected;
  const StageWeightsSpec whole{
      .first_layer = 0, .last_layer = config.n_layers, .embedding = true, .head = true};
  for (const std::string& hf : required_tensor_names(config, whole)) {
    const std::string name = *gguf_tensor_name(hf);
    expected.insert(name);
    const GgufTensorInfo* info = c.find_tensor(name);
    if (info == nullptr) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" ({}) is missing; the file does not hold a complete {} model of {} "
           "layers",
           c.origin, name, hf, architecture_name(config.architecture), config.n_layers);
    }
    const std::vector<int64_t> shape = tensor_shape(config, hf);
    const std::vector<int64_t> got = info->shape();
    if (got != shape) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" has shape {} (ggml ne {}) but the metadata implies {}; the file is "
           "inconsistent",
           c.origin, name, shape_string(got), shape_string(info->ne), shape_string(shape));
    }
    if (!ggml_type_supported(info->type)) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" is {}, an unsupported quant type; conveyor reads {} (re-quantize "
           "the model to one of them)",
           c.origin, name, ggml_type_name(info->type), supported_ggml_types());
    }
  }
  for (const GgufTensorInfo& info : c.tensors) {
    if (expected.contains(info.name) || info.name == kRopeFreqs) continue;
    if (const auto block = split_block(info.name); block && block->first >= config.n_layers) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" belongs to layer {}, beyond the {} layers of block_count; the file "
           "is inconsistent",
           c.origin, info.name, block->first, config.n_layers);
    }
    fail(ErrorCode::kModelFormat,
         "{}: tensor \"{}\" is not part of a {} model as conveyor implements it (it would change "
         "the math); this model variant is not supported",
         c.origin, info.name, architecture_name(config.architecture));
  }
}

std::string describe_gguf(const GgufFile& file) {
  const GgufContents& c = file.contents();
  std::map<uint32_t, int> counts;
  for (const GgufTensorInfo& info : c.tensors)
    ++counts[info.type];
  std::vector<std::pair<int, uint32_t>> order;
  for (const auto& [type, n] : counts)
    order.emplace_back(-n, type);
  std::sort(order.begin(), order.end());
  std::vector<std::string> parts;
  for (const auto& [n, type] : order)
    parts.push_back(fmt::format("{} {}", -n, ggml_type_name(type)));
  return fmt::format("GGUF v{}, {} tensors: {}", c.version, c.tensors.size(),
                     fmt::join(parts, ", "));
}

namespace {

class GgufTensors final : public TensorSource {
 public:
  GgufTensors(std::shared_ptr<const GgufFile> file, const ModelConfig& config)
      : file_(std::move(file)), config_(config) {}

  bool contains(std::string_view name) const override {
    const auto gguf = gguf_tensor_name(name);
    return gguf && file_->contents().find_tensor(*gguf) != nullptr;
  }

  std::vector<float> load_f32(std::string_view name,
                              std::span<const int64_t> expected_shape) const override {
    const GgufContents& c = file_->contents();
    const auto [info, gguf] = find_checked(name, expected_shape);
    const std::vector<int64_t> shape = info->shape();
    std::vector<float> values(static_cast<size_t>(info->numel()));
    try {
      dequantize_releasing(*info, values);
    } catch (const Error& e) {
      fail(ErrorCode::kModelFormat, "{}: tensor \"{}\": {}", c.origin, gguf, e.what());
    }
    bytes_read_ += info->n_bytes;
    file_->release_pages(*info);
    if (config_.architecture != Architecture::kQwen2 && is_query_or_key(name)) {
      const bool query = name.find("q_proj") != std::string_view::npos;
      const int64_t rows = shape.front();
      const int64_t cols = shape.size() == 2 ? shape[1] : 1;
      unpermute_qk_rows(values, rows, cols, query ? config_.n_heads : config_.n_kv_heads);
    }
    return values;
  }

  // F32 and BF16 tensors in place. A Llama query or key is in place too, flagged: GGUF stores
  // its rows permuted for llama.cpp's RoPE (load_f32 puts them back in Hugging Face order).
  std::optional<StoredTensor> stored(std::string_view name, std::span<const int64_t> expected_shape,
                                     DType dtype) const override {
    const GgufTensorInfo* info = find_checked(name, expected_shape).first;
    std::optional<DType> type;
    if (info->type == static_cast<uint32_t>(GgmlType::kF32)) type = DType::kF32;
    if (info->type == static_cast<uint32_t>(GgmlType::kBF16)) type = DType::kBF16;
    const bool permuted = config_.architecture != Architecture::kQwen2 && is_query_or_key(name);
    std::optional<StoredTensor> tensor =
        tensor_in_place(file_->bytes(*info), type, dtype, file_->mapping(), permuted);
    if (tensor) bytes_read_ += info->n_bytes;
    return tensor;
  }

  uint64_t bytes_read() const override { return bytes_read_.load(); }

 private:
  // The tensor `name` after checking its shape, and its GGUF name.
  std::pair<const GgufTensorInfo*, std::string> find_checked(
      std::string_view name, std::span<const int64_t> expected_shape) const {
    const GgufContents& c = file_->contents();
    const auto gguf = gguf_tensor_name(name);
    const GgufTensorInfo* info = gguf ? c.find_tensor(*gguf) : nullptr;
    if (info == nullptr) {
      fail(ErrorCode::kModelFormat, "{}: tensor \"{}\"{} is not in the file", c.origin, name,
           gguf ? fmt::format(" (GGUF \"{}\")", *gguf) : std::string());
    }
    const std::vector<int64_t> shape = info->shape();
    if (!std::equal(shape.begin(), shape.end(), expected_shape.begin(), expected_shape.end())) {
      fail(ErrorCode::kModelFormat,
           "{}: tensor \"{}\" ({}) has shape {} but the model implies {}; the file is "
           "inconsistent",
           c.origin, *gguf, name, shape_string(shape), shape_string(expected_shape));
    }
    return {info, *gguf};
  }

  // Dequantizes a tensor in pieces of about kPieceBytes of file data, releasing each piece's
  // pages once converted: the file's pages of a large tensor (an F32 embedding is 113 MiB for
  // SmolLM2) are never resident all at once beside the converted values.
  void dequantize_releasing(const GgufTensorInfo& info, std::span<float> values) const {
    constexpr uint64_t kPieceBytes = uint64_t{4} << 20;
    const std::span<const std::byte> bytes = file_->bytes(info);
    const GgmlTypeTraits* traits = ggml_type_traits(info.type);
    if (traits == nullptr || traits->block_bytes <= 0 || traits->block_elems <= 0) {
      dequantize_row(info.type, bytes, values);  // names the type it cannot read
      return;
    }
    const auto block_bytes = static_cast<uint64_t>(traits->block_bytes);
    const auto block_elems = static_cast<uint64_t>(traits->block_elems);
    const uint64_t blocks_per_piece = std::max<uint64_t>(1, kPieceBytes / block_bytes);
    const uint64_t n_blocks = values.size() / block_elems;
    if (n_blocks * block_bytes != bytes.size() || n_blocks * block_elems != values.size()) {
      dequantize_row(info.type, bytes, values);  // names the size mismatch
      return;
    }
    for (uint64_t b0 = 0; b0 < n_blocks; b0 += blocks_per_piece) {
      const uint64_t nb = std::min(blocks_per_piece, n_blocks - b0);
      dequantize_row(info.type, bytes.subspan(b0 * block_bytes, nb * block_bytes),
                     values.subspan(b0 * block_elems, nb * block_elems));
      file_->release_pages(info, b0 * block_bytes, nb * block_bytes);
    }
  }

  std::shared_ptr<const GgufFile> file_;
  ModelConfig config_;
  mutable std::atomic<uint64_t> bytes_read_{0};
};

}  // namespace

std::unique_ptr<TensorSource> make_gguf_tensors(std::shared_ptr<const GgufFile> file,
                                                const ModelConfig& config) {
  return std::make_unique<GgufTensors>(std::move(file), config);
}

}  // namespace conveyor
