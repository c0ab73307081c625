// Host fp32 weights of one pipeline stage: its decoder layers, plus the embedding on the first
// stage and the final norm + lm_head on the last. Loaded from SafeTensors by layer range.
#pragma once

#include <cstdint>
#include <vector>

#include "conveyor/model_config.hpp"
#include "conveyor/safetensors.hpp"

namespace conveyor {

// Row-major, Hugging Face orientation: a projection weight is [out_features, in_features].
struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  std::vector<float> wq;         // [n_heads * head_dim, hidden]
  std::vector<float> wk;         // [n_kv_heads * head_dim, hidden]
  std::vector<float> wv;         // [n_kv_heads * head_dim, hidden]
  std::vector<float> bq;         // [n_heads * head_dim] or empty (attention_bias = false)
  std::vector<float> bk;         // [n_kv_heads * head_dim] or empty
  std::vector<float> bv;         // [n_kv_heads * head_dim] or empty
  std::vector<float> wo;         // [hidden, n_heads * head_dim]
  std::vector<float> mlp_norm;   // [hidden]
  std::vector<float> w_gate;     // [intermediate, hidden]
  std::vector<float> w_up;       // [intermediate, hidden]
  std::vector<float> w_down;     // [hidden, intermediate]

  int64_t bytes() const;
};

struct StageWeightsSpec {
  int64_t first_layer = 0;  // [first_layer, last_layer)
  int64_t last_layer = 0;
  bool embedding = false;   // model.embed_tokens
  bool head = false;        // model.norm + lm_head (embed_tokens when tied)
};

struct StageWeights {
  StageWeightsSpec spec;
  std::vector<float> embedding;   // [vocab, hidden] when spec.embedding
  std::vector<LayerWeights> layers;  // last_layer - first_layer entries
  std::vector<float> final_norm;  // [hidden] when spec.head
  std::vector<float> lm_head;     // [vocab, hidden] when spec.head

  int64_t bytes() const;
};

// Hugging Face tensor names: "model.layers.{i}.self_attn.q_proj.weight" and so on.
std::vector<std::string> required_tensor_names(const ModelConfig& config, const StageWeightsSpec& spec);

// Loads (and converts to fp32) exactly the tensors `spec` needs, checking every shape against
// the config. Throws conveyor::Error(kModelFormat) naming the tensor on a missing tensor or a
// shape mismatch.
StageWeights load_stage_weights(const SafeTensors& tensors, const ModelConfig& config,
                                const StageWeightsSpec& spec);

}  // namespace conveyor
