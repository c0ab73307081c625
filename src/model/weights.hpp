// The tensors of one pipeline stage: its decoder layers, plus the embedding on the first stage
// and the final norm + lm_head on the last. Loaded from SafeTensors by layer range, or drawn
// from a seed (random-weights models for benchmarks and tests).
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "conveyor/checkpoint.hpp"
#include "conveyor/model_config.hpp"

namespace conveyor {

// The tensors of one decoder layer in a fixed order. T is how a tensor is held: host fp32 values
// (LayerWeights), a device pointer (the CUDA backend), or the recipe of random values
// (LayerDraws). Row-major, Hugging Face orientation: a projection is [out_features, in_features].
template <typename T>
struct LayerTensors {
  T attn_norm{};  // [hidden]
  T wq{};         // [n_heads * head_dim, hidden]
  T wk{};         // [n_kv_heads * head_dim, hidden]
  T wv{};         // [n_kv_heads * head_dim, hidden]
  T bq{};         // [n_heads * head_dim] or absent (attention_bias = false)
  T bk{};         // [n_kv_heads * head_dim] or absent
  T bv{};         // [n_kv_heads * head_dim] or absent
  T wo{};         // [hidden, n_heads * head_dim]
  T mlp_norm{};   // [hidden]
  T w_gate{};     // [intermediate, hidden]
  T w_up{};       // [intermediate, hidden]
  T w_down{};     // [hidden, intermediate]

  // The fields in declaration order (the order of kLayerTensorSuffixes).
  auto fields() {
    return std::tie(attn_norm, wq, wk, wv, bq, bk, bv, wo, mlp_norm, w_gate, w_up, w_down);
  }
  auto fields() const {
    return std::tie(attn_norm, wq, wk, wv, bq, bk, bv, wo, mlp_norm, w_gate, w_up, w_down);
  }

  // Bytes of the host fp32 values held.
  int64_t bytes() const requires std::same_as<T, std::vector<float>> {
    size_t values = 0;
    std::apply([&](const auto&... field) { ((values += field.size()), ...); }, fields());
    return static_cast<int64_t>(values * sizeof(float));
  }
};

inline constexpr size_t kLayerTensorCount = 12;
// Hugging Face names of LayerTensors' fields after "model.layers.{i}.".
inline constexpr std::array<std::string_view, kLayerTensorCount> kLayerTensorSuffixes = {
    "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.q_proj.bias",   "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",   "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight"};

// Shape of field `index` of a layer of `config`; empty when the model has no such tensor (the
// biases without attention_bias).
std::vector<int64_t> layer_tensor_shape(const ModelConfig& config, size_t index);

// Calls f(index, field) for every field of a layer, in order.
template <typename A, typename F>
void for_each_layer_tensor(A&& a, F&& f) {
  auto fa = a.fields();
  [&]<size_t... I>(std::index_sequence<I...>) {
    (f(I, std::get<I>(fa)), ...);
  }
  (std::make_index_sequence<kLayerTensorCount>{});
}

// Calls f(index, a_field, b_field) for every field of two layers, in order.
template <typename A, typename B, typename F>
void zip_layer_tensors(A&& a, B&& b, F&& f) {
  auto fa = a.fields();
  auto fb = b.fields();
  [&]<size_t... I>(std::index_sequence<I...>) {
    (f(I, std::get<I>(fa), std::get<I>(fb)), ...);
  }
  (std::make_index_sequence<kLayerTensorCount>{});
}

struct StageWeightsSpec {
  int64_t first_layer = 0;  // [first_layer, last_layer)
  int64_t last_layer = 0;
  bool embedding = false;  // model.embed_tokens
  bool head = false;       // model.norm + lm_head (embed_tokens when tied)
};

// One pipeline stage's tensors: its decoder layers, plus the embedding on the first stage and
// the final norm + lm_head on the last.
template <typename T>
struct StageTensors {
  StageWeightsSpec spec;
  T embedding{};                        // [vocab, hidden] when spec.embedding
  std::vector<LayerTensors<T>> layers;  // last_layer - first_layer entries
  T final_norm{};                       // [hidden] when spec.head
  // [vocab, hidden] when spec.head; empty when the model ties it to the embedding and this stage
  // holds the embedding (one copy serves both)
  T lm_head{};

  int64_t bytes() const requires std::same_as<T, std::vector<float>> {
    auto total = static_cast<int64_t>((embedding.size() + final_norm.size() + lm_head.size()) *
                                      sizeof(float));
    for (const LayerTensors<T>& layer : layers)
      total += layer.bytes();
    return total;
  }
};

namespace weights_detail {
std::string layer_prefix(int64_t layer);  // "model.layers.{layer}."
void check_spec(const ModelConfig& config, const StageWeightsSpec& spec);
inline constexpr std::string_view kEmbedding = "model.embed_tokens.weight";
inline constexpr std::string_view kFinalNorm = "model.norm.weight";
inline constexpr std::string_view kLmHead = "lm_head.weight";
}  // namespace weights_detail

// Builds the tensors `spec` holds in model order, each from make(name, shape) as it comes, so a
// backend that stores another form (bf16) converts one tensor at a time and never holds the
// stage twice. A tied head is not made again on a stage that embeds (lm_head stays empty); on a
// stage that does not, it is made from the embedding's tensor.
template <typename T, typename Make>
StageTensors<T> build_stage_tensors(const ModelConfig& config, const StageWeightsSpec& spec,
                                    Make&& make) {
  using namespace weights_detail;
  check_spec(config, spec);
  const std::vector<int64_t> table{config.vocab_size, config.hidden_size};
  StageTensors<T> stage;
  stage.spec = spec;
  if (spec.embedding) stage.embedding = make(kEmbedding, table);
  stage.layers.reserve(static_cast<size_t>(spec.last_layer - spec.first_layer));
  for (int64_t layer = spec.first_layer; layer < spec.last_layer; ++layer) {
    const std::string prefix = layer_prefix(layer);
    for_each_layer_tensor(stage.layers.emplace_back(), [&](size_t index, T& tensor) {
      const std::vector<int64_t> shape = layer_tensor_shape(config, index);
      if (!shape.empty()) tensor = make(prefix + std::string(kLayerTensorSuffixes[index]), shape);
    });
  }
  if (spec.head) {
    stage.final_norm = make(kFinalNorm, {config.hidden_size});
    if (!config.tie_word_embeddings) {
      stage.lm_head = make(kLmHead, table);
    } else if (!spec.embedding) {
      stage.lm_head = make(kEmbedding, table);
    }
  }
  return stage;
}

// Host fp32 weights, read from a checkpoint or drawn.
using LayerWeights = LayerTensors<std::vector<float>>;
using StageWeights = StageTensors<std::vector<float>>;

// One tensor of a random-weights model (EngineOptions::random_weights_seed): element i is
// random_weight(key, i, mean, half_width) (core/random_bits.hpp). numel == 0: absent.
struct TensorDraw {
  uint64_t key = 0;
  float mean = 0.0f;
  float half_width = 0.0f;
  int64_t numel = 0;
};
using LayerDraws = LayerTensors<TensorDraw>;
using StageDraws = StageTensors<TensorDraw>;

// Shape of a tensor of `config` by Hugging Face name ("model.embed_tokens.weight",
// "model.layers.3.mlp.up_proj.weight", ...). Throws kInvalidArgument for names the model lacks.
std::vector<int64_t> tensor_shape(const ModelConfig& config, std::string_view name);

// Hugging Face tensor names: "model.layers.{i}.self_attn.q_proj.weight" and so on.
std::vector<std::string> required_tensor_names(const ModelConfig& config,
                                               const StageWeightsSpec& spec);

// Loads (and converts to fp32) exactly the tensors `spec` needs, checking every shape against
// the config. Throws conveyor::Error(kModelFormat) naming the tensor on a missing tensor or a
// shape mismatch.
StageWeights load_stage_weights(const TensorSource& tensors, const ModelConfig& config,
                                const StageWeightsSpec& spec);

// The recipe of a stage of a random-weights model: the shapes of `config`, means and spreads of
// conveyor-make-model's recipes (uniform instead of normal, same standard deviation), keys from
// (seed, tensor name). A tied head draws the embedding's values.
StageDraws random_stage_draws(const ModelConfig& config, const StageWeightsSpec& spec,
                              uint64_t seed);

// The host fp32 values of a drawn stage (the CPU backend's weights; tests' reference).
StageWeights draw_stage_weights(const StageDraws& draws);
std::vector<float> draw_tensor(const TensorDraw& draw);

// A stage's tensors still in the checkpoint: the backend loads them itself, one at a time, into
// the form it stores (tensors must outlive the call that builds the stage).
struct StageCheckpoint {
  const TensorSource* tensors = nullptr;
  StageWeightsSpec spec;
};

// A TensorSource's tensor in place (TensorSource::stored): `bytes` of the file mapping held by
// `keep_alive`, stored as `stored` (nullopt: a type no backend computes with), when a backend
// wants `wanted` (kF32 or kBF16), the types agree and the bytes are aligned for it; its pages
// are read in first. nullopt otherwise (the caller's load_f32 converts).
std::optional<StoredTensor> tensor_in_place(std::span<const std::byte> bytes,
                                            std::optional<DType> stored, DType wanted,
                                            std::shared_ptr<const void> keep_alive,
                                            bool rope_pairs_adjacent = false);

// Bytes of the fp32 tensors `spec` loads (a tied head on a stage that embeds counted once).
int64_t stage_f32_bytes(const ModelConfig& config, const StageWeightsSpec& spec);

// What a stage backend is built from.
using StageSource = std::variant<StageWeights, StageDraws, StageCheckpoint>;

}  // namespace conveyor
