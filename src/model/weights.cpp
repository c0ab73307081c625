// One pipeline stage's tensors: loaded as fp32 from SafeTensors by Hugging Face tensor name, or
// described (and drawn) for a random-weights model.
#include "model/weights.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "core/check.hpp"
#include "core/mapped_file.hpp"
#include "core/random_bits.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace weights_detail {

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

}  // namespace weights_detail

std::vector<int64_t> layer_tensor_shape(const ModelConfig& config, size_t index) {
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_dim = config.q_dim();
  const int64_t kv_dim = config.kv_dim();
  switch (index) {
    case 0:  // input_layernorm
    case 8:  // post_attention_layernorm
      return {hidden};
    case 1:
      return {q_dim, hidden};
    case 2:
    case 3:
      return {kv_dim, hidden};
    case 4:
      return config.attention_bias ? std::vector<int64_t>{q_dim} : std::vector<int64_t>{};
    case 5:
    case 6:
      return config.attention_bias ? std::vector<int64_t>{kv_dim} : std::vector<int64_t>{};
    case 7:
      return {hidden, q_dim};
    case 9:
    case 10:
      return {inter, hidden};
    case 11:
      return {hidden, inter};
    default:
      CONVEYOR_ASSERT(false);
  }
}

std::vector<int64_t> tensor_shape(const ModelConfig& config, std::string_view name) {
  if (name == weights_detail::kEmbedding || name == weights_detail::kLmHead)
    return {config.vocab_size, config.hidden_size};
  if (name == weights_detail::kFinalNorm) return {config.hidden_size};
  constexpr std::string_view kLayers = "model.layers.";
  if (name.starts_with(kLayers)) {
    const size_t dot = name.find('.', kLayers.size());
    if (dot != std::string_view::npos) {
      const std::string_view suffix = name.substr(dot + 1);
      for (size_t i = 0; i < kLayerTensorCount; ++i) {
        if (kLayerTensorSuffixes[i] == suffix) {
          std::vector<int64_t> shape = layer_tensor_shape(config, i);
          if (!shape.empty()) return shape;
        }
      }
    }
  }
  fail(ErrorCode::kInvalidArgument, "\"{}\" is not a tensor of this {} model", name,
       architecture_name(config.architecture));
}

std::vector<std::string> required_tensor_names(const ModelConfig& config,
                                               const StageWeightsSpec& spec) {
  std::vector<std::string> names;
  build_stage_tensors<int>(config, spec, [&](std::string_view name, const std::vector<int64_t>&) {
    names.emplace_back(name);
    return 0;
  });
  return names;
}

StageWeights load_stage_weights(const TensorSource& tensors, const ModelConfig& config,
                                const StageWeightsSpec& spec) {
  return build_stage_tensors<std::vector<float>>(
      config, spec, [&](std::string_view name, const std::vector<int64_t>& shape) {
        return tensors.load_f32(name, shape);
      });
}

std::optional<StoredTensor> tensor_in_place(std::span<const std::byte> bytes,
                                            std::optional<DType> stored, DType wanted,
                                            std::shared_ptr<const void> keep_alive,
                                            bool rope_pairs_adjacent) {
  if (stored != wanted || (wanted != DType::kF32 && wanted != DType::kBF16)) return std::nullopt;
  if (reinterpret_cast<std::uintptr_t>(bytes.data()) % dtype_size(wanted) != 0) return std::nullopt;
  populate_pages(bytes);
  return StoredTensor{.bytes = bytes,
                      .keep_alive = std::move(keep_alive),
                      .rope_pairs_adjacent = rope_pairs_adjacent};
}

int64_t stage_f32_bytes(const ModelConfig& config, const StageWeightsSpec& spec) {
  int64_t bytes = 0;
  build_stage_tensors<int>(config, spec, [&](std::string_view, const std::vector<int64_t>& shape) {
    int64_t numel = 1;
    for (int64_t dim : shape)
      numel *= dim;
    bytes += numel * static_cast<int64_t>(sizeof(float));
    return 0;
  });
  return bytes;
}

StageDraws random_stage_draws(const ModelConfig& config, const StageWeightsSpec& spec,
                              uint64_t seed) {
  std::unordered_map<std::string, TensorRecipe> recipes;
  for (TensorRecipe& recipe : model_tensor_recipes(config))
    recipes.emplace(recipe.name, std::move(recipe));
  const uint64_t seed_key = splitmix64(seed);
  return build_stage_tensors<TensorDraw>(
      config, spec, [&](std::string_view name, const std::vector<int64_t>& shape) {
        const auto it = recipes.find(std::string(name));
        CONVEYOR_ASSERT(it != recipes.end());
        int64_t numel = 1;
        for (int64_t dim : shape)
          numel *= dim;
        // Uniform on [mean - w, mean + w) has standard deviation w / sqrt(3).
        return TensorDraw{.key = splitmix64(seed_key ^ fnv1a_64(name)),
                          .mean = static_cast<float>(it->second.mean),
                          .half_width = static_cast<float>(it->second.std * std::sqrt(3.0)),
                          .numel = numel};
      });
}

std::vector<float> draw_tensor(const TensorDraw& draw) {
  std::vector<float> values(static_cast<size_t>(draw.numel));
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = random_weight(draw.key, i, draw.mean, draw.half_width);
  return values;
}

StageWeights draw_stage_weights(const StageDraws& draws) {
  StageWeights stage;
  stage.spec = draws.spec;
  stage.embedding = draw_tensor(draws.embedding);
  for (const LayerDraws& layer : draws.layers) {
    zip_layer_tensors(stage.layers.emplace_back(), layer,
                      [](size_t, std::vector<float>& values, const TensorDraw& draw) {
                        values = draw_tensor(draw);
                      });
  }
  stage.final_norm = draw_tensor(draws.final_norm);
  stage.lm_head = draw_tensor(draws.lm_head);
  return stage;
}

}  // namespace conveyor
