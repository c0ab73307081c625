// The tensors of one pipeline stage: its decoder layers, plus the embedding on the first stage
// and the final norm + lm_head on the last. Loaded from SafeTensors by layer range, or drawn
// from a seed (random-weights models for benchmarks and tests).
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
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
  T lm_head{};                          // [vocab, hidden] when spec.head (a copy when tied)

  int64_t bytes() const requires std::same_as<T, std::vector<float>> {
    auto total = static_cast<int64_t>((embedding.size() + final_norm.size() + lm_head.size()) *
                                      sizeof(float));
    for (const LayerTensors<T>& layer : layers)
      total += layer.bytes();
    return total;
  }
};

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

// What a stage backend is built from.
using StageSource = std::variant<StageWeights, StageDraws>;

}  // namespace conveyor
