// Loading one pipeline stage's fp32 weights from SafeTensors by Hugging Face tensor name.
#include "model/weights.hpp"

#include <fmt/format.h>

#include <array>

#include "core/check.hpp"

namespace conveyor {
namespace {

int64_t vector_bytes(const std::vector<float>& v) {
  return static_cast<int64_t>(v.size() * sizeof(float));
}

std::string layer_prefix(int64_t layer) {
  return fmt::format("model.layers.{}.", layer);
}

void check_spec(const ModelConfig& config, const StageWeightsSpec& spec) {
  if (spec.first_layer < 0 || spec.first_layer > spec.last_layer ||
      spec.last_layer > config.n_layers) {
    fail(ErrorCode::kInvalidArgument,
         "stage layer range [{}, {}) is not inside the model's {} layers; need 0 <= first_layer "
         "<= last_layer <= {}",
         spec.first_layer, spec.last_layer, config.n_layers, config.n_layers);
  }
}

constexpr std::string_view kEmbedding = "model.embed_tokens.weight";
constexpr std::string_view kFinalNorm = "model.norm.weight";
constexpr std::string_view kLmHead = "lm_head.weight";

}  // namespace

int64_t LayerWeights::bytes() const {
  int64_t total = 0;
  for (const std::vector<float>* v :
       {&attn_norm, &wq, &wk, &wv, &bq, &bk, &bv, &wo, &mlp_norm, &w_gate, &w_up, &w_down}) {
    total += vector_bytes(*v);
  }
  return total;
}

int64_t StageWeights::bytes() const {
  int64_t total = vector_bytes(embedding) + vector_bytes(final_norm) + vector_bytes(lm_head);
  for (const LayerWeights& layer : layers)
    total += layer.bytes();
  return total;
}

std::vector<std::string> required_tensor_names(const ModelConfig& config,
                                               const StageWeightsSpec& spec) {
  check_spec(config, spec);
  std::vector<std::string> names;
  if (spec.embedding) names.emplace_back(kEmbedding);
  for (int64_t layer = spec.first_layer; layer < spec.last_layer; ++layer) {
    const std::string p = layer_prefix(layer);
    names.push_back(p + "input_layernorm.weight");
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      names.push_back(p + "self_attn." + proj + ".weight");
    }
    if (config.attention_bias) {
      for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
        names.push_back(p + "self_attn." + proj + ".bias");
      }
    }
    names.push_back(p + "post_attention_layernorm.weight");
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      names.push_back(p + "mlp." + proj + ".weight");
    }
  }
  if (spec.head) {
    names.emplace_back(kFinalNorm);
    if (!config.tie_word_embeddings) {
      names.emplace_back(kLmHead);
    } else if (!spec.embedding) {
      names.emplace_back(kEmbedding);  // the tied head reads the embedding matrix
    }
  }
  return names;
}

StageWeights load_stage_weights(const SafeTensors& tensors, const ModelConfig& config,
                                const StageWeightsSpec& spec) {
  check_spec(config, spec);
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_dim = config.q_dim();
  const int64_t kv_dim = config.kv_dim();
  auto load = [&](std::string_view name, std::initializer_list<int64_t> shape) {
    return tensors.load_f32(name, std::span<const int64_t>(shape.begin(), shape.size()));
  };

  StageWeights stage;
  stage.spec = spec;
  if (spec.embedding) stage.embedding = load(kEmbedding, {config.vocab_size, hidden});
  stage.layers.reserve(static_cast<std::size_t>(spec.last_layer - spec.first_layer));
  for (int64_t layer = spec.first_layer; layer < spec.last_layer; ++layer) {
    const std::string p = layer_prefix(layer);
    LayerWeights& w = stage.layers.emplace_back();
    w.attn_norm = load(p + "input_layernorm.weight", {hidden});
    w.wq = load(p + "self_attn.q_proj.weight", {q_dim, hidden});
    w.wk = load(p + "self_attn.k_proj.weight", {kv_dim, hidden});
    w.wv = load(p + "self_attn.v_proj.weight", {kv_dim, hidden});
    if (config.attention_bias) {
      w.bq = load(p + "self_attn.q_proj.bias", {q_dim});
      w.bk = load(p + "self_attn.k_proj.bias", {kv_dim});
      w.bv = load(p + "self_attn.v_proj.bias", {kv_dim});
    }
    w.wo = load(p + "self_attn.o_proj.weight", {hidden, q_dim});
    w.mlp_norm = load(p + "post_attention_layernorm.weight", {hidden});
    w.w_gate = load(p + "mlp.gate_proj.weight", {inter, hidden});
    w.w_up = load(p + "mlp.up_proj.weight", {inter, hidden});
    w.w_down = load(p + "mlp.down_proj.weight", {hidden, inter});
  }
  if (spec.head) {
    stage.final_norm = load(kFinalNorm, {hidden});
    if (!config.tie_word_embeddings) {
      stage.lm_head = load(kLmHead, {config.vocab_size, hidden});
    } else if (spec.embedding) {
      stage.lm_head = stage.embedding;
    } else {
      stage.lm_head = load(kEmbedding, {config.vocab_size, hidden});
    }
  }
  return stage;
}

}  // namespace conveyor
