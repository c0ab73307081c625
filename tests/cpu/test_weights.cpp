// Tests of required_tensor_names and load_stage_weights on made tiny models: names, shapes,
// values, tied heads, Qwen2 biases, range checks, missing tensors and lazy shard mapping.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/safetensors.hpp"
#include "model/make_model.hpp"
#include "model/weights.hpp"

namespace {

using conveyor::Architecture;
using conveyor::ModelConfig;
using conveyor::SafeTensors;
using conveyor::StageWeights;
using conveyor::StageWeightsSpec;
using ::testing::HasSubstr;

struct MadeModel {
  conveyor::test::TempDir dir{"conveyor-weights"};
  conveyor::MakeModelOptions options;
};

void make(MadeModel& model, const conveyor::ConfigOverrides& overrides,
          int64_t shard_max_bytes = 0) {
  model.options.config = conveyor::preset_config("tiny");
  conveyor::apply_overrides(model.options.config, overrides);
  model.options.seed = 5;
  model.options.out_dir = model.dir.path();
  model.options.shard_max_bytes = shard_max_bytes;
  conveyor::make_model(model.options);
}

std::vector<float> expected(const MadeModel& model, const std::string& name) {
  for (const auto& recipe : conveyor::model_tensor_recipes(model.options.config)) {
    if (recipe.name == name) return conveyor::generate_tensor(recipe, model.options.seed);
  }
  ADD_FAILURE() << "no recipe for " << name;
  return {};
}

TEST(RequiredTensorNames, CountsAndOrder) {
  ModelConfig c = conveyor::preset_config("tiny");
  std::vector<std::string> names = conveyor::required_tensor_names(c, {0, 4, true, true});
  EXPECT_EQ(names.size(), 1u + 4 * 9 + 2);
  EXPECT_EQ(names.front(), "model.embed_tokens.weight");
  EXPECT_EQ(names[1], "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(names[2], "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(names.back(), "lm_head.weight");
  EXPECT_NE(std::find(names.begin(), names.end(), "model.layers.3.mlp.down_proj.weight"),
            names.end());

  names = conveyor::required_tensor_names(c, {1, 3, false, false});
  EXPECT_EQ(names.size(), 2u * 9);
  EXPECT_EQ(names.front(), "model.layers.1.input_layernorm.weight");

  c.architecture = Architecture::kQwen2;
  c.attention_bias = true;
  names = conveyor::required_tensor_names(c, {2, 3, false, false});
  EXPECT_EQ(names.size(), 12u);
  EXPECT_NE(std::find(names.begin(), names.end(), "model.layers.2.self_attn.v_proj.bias"),
            names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), "model.layers.2.self_attn.o_proj.bias"),
            names.end());

  // A tied head reads the embedding; listed once when the stage also embeds.
  c.tie_word_embeddings = true;
  names = conveyor::required_tensor_names(c, {4, 4, false, true});
  EXPECT_EQ(names, (std::vector<std::string>{"model.norm.weight", "model.embed_tokens.weight"}));
  names = conveyor::required_tensor_names(c, {0, 0, true, true});
  EXPECT_EQ(names, (std::vector<std::string>{"model.embed_tokens.weight", "model.norm.weight"}));
}

TEST(RequiredTensorNames, RejectsBadLayerRanges) {
  const ModelConfig c = conveyor::preset_config("tiny");
  for (StageWeightsSpec spec :
       {StageWeightsSpec{-1, 2}, StageWeightsSpec{3, 2}, StageWeightsSpec{0, 5}}) {
    try {
      conveyor::required_tensor_names(c, spec);
      ADD_FAILURE() << "expected an error for [" << spec.first_layer << ", " << spec.last_layer
                    << ")";
    } catch (const conveyor::Error& e) {
      EXPECT_EQ(e.code(), conveyor::ErrorCode::kInvalidArgument);
      EXPECT_THAT(e.what(), HasSubstr("4 layers"));
    }
  }
}

TEST(LoadStageWeights, FullModelValuesAndShapes) {
  MadeModel model;
  make(model, {});
  const ModelConfig& c = model.options.config;
  const SafeTensors tensors = SafeTensors::open(model.dir.path());
  const StageWeights w = conveyor::load_stage_weights(tensors, c, {0, 4, true, true});
  EXPECT_EQ(w.spec.last_layer, 4);
  ASSERT_EQ(w.layers.size(), 4u);
  EXPECT_EQ(w.embedding, expected(model, "model.embed_tokens.weight"));
  EXPECT_EQ(w.final_norm, expected(model, "model.norm.weight"));
  EXPECT_EQ(w.lm_head, expected(model, "lm_head.weight"));
  const conveyor::LayerWeights& l2 = w.layers[2];
  EXPECT_EQ(l2.attn_norm, expected(model, "model.layers.2.input_layernorm.weight"));
  EXPECT_EQ(l2.wq, expected(model, "model.layers.2.self_attn.q_proj.weight"));
  EXPECT_EQ(l2.wk, expected(model, "model.layers.2.self_attn.k_proj.weight"));
  EXPECT_EQ(l2.wv, expected(model, "model.layers.2.self_attn.v_proj.weight"));
  EXPECT_EQ(l2.wo, expected(model, "model.layers.2.self_attn.o_proj.weight"));
  EXPECT_EQ(l2.mlp_norm, expected(model, "model.layers.2.post_attention_layernorm.weight"));
  EXPECT_EQ(l2.w_gate, expected(model, "model.layers.2.mlp.gate_proj.weight"));
  EXPECT_EQ(l2.w_up, expected(model, "model.layers.2.mlp.up_proj.weight"));
  EXPECT_EQ(l2.w_down, expected(model, "model.layers.2.mlp.down_proj.weight"));
  EXPECT_TRUE(l2.bq.empty());
  EXPECT_EQ(l2.wk.size(), static_cast<std::size_t>(c.kv_dim() * c.hidden_size));
  EXPECT_EQ(l2.w_down.size(), static_cast<std::size_t>(c.hidden_size * c.intermediate_size));
  EXPECT_EQ(l2.bytes(), c.layer_params() * 4);
  EXPECT_EQ(w.bytes(), c.n_params() * 4);
}

TEST(LoadStageWeights, MiddleStageLoadsOnlyItsLayers) {
  MadeModel model;
  make(model, {});
  const SafeTensors tensors = SafeTensors::open(model.dir.path());
  const StageWeights w =
      conveyor::load_stage_weights(tensors, model.options.config, {1, 3, false, false});
  ASSERT_EQ(w.layers.size(), 2u);
  EXPECT_TRUE(w.embedding.empty());
  EXPECT_TRUE(w.lm_head.empty());
  EXPECT_TRUE(w.final_norm.empty());
  EXPECT_EQ(w.layers[0].wq, expected(model, "model.layers.1.self_attn.q_proj.weight"));
  EXPECT_EQ(w.bytes(), 2 * model.options.config.layer_params() * 4);
}

TEST(LoadStageWeights, Qwen2BiasesAndTiedHead) {
  MadeModel model;
  make(model, {.architecture = Architecture::kQwen2, .n_layers = 2, .tie_word_embeddings = true});
  const ModelConfig& c = model.options.config;
  const SafeTensors tensors = SafeTensors::open(model.dir.path());
  EXPECT_FALSE(tensors.contains("lm_head.weight"));
  const StageWeights last = conveyor::load_stage_weights(tensors, c, {1, 2, false, true});
  ASSERT_EQ(last.layers.size(), 1u);
  EXPECT_EQ(last.layers[0].bq, expected(model, "model.layers.1.self_attn.q_proj.bias"));
  EXPECT_EQ(last.layers[0].bk.size(), static_cast<std::size_t>(c.kv_dim()));
  EXPECT_EQ(last.layers[0].bv, expected(model, "model.layers.1.self_attn.v_proj.bias"));
  EXPECT_EQ(last.lm_head, expected(model, "model.embed_tokens.weight"));
  EXPECT_TRUE(last.embedding.empty());

  EXPECT_EQ(conveyor::stage_f32_bytes(c, {1, 2, false, true}), last.bytes());

  // A stage holding both ends loads the tied table once: its lm_head stays empty.
  const StageWeights whole = conveyor::load_stage_weights(tensors, c, {0, 2, true, true});
  EXPECT_EQ(whole.embedding, expected(model, "model.embed_tokens.weight"));
  EXPECT_TRUE(whole.lm_head.empty());
  EXPECT_EQ(whole.bytes(), c.n_params() * 4);
  EXPECT_EQ(conveyor::stage_f32_bytes(c, {0, 2, true, true}), whole.bytes());
}

TEST(LoadStageWeights, MissingTensorAndShapeMismatchNameTheTensor) {
  MadeModel model;
  make(model, {.tie_word_embeddings = true});
  const SafeTensors tensors = SafeTensors::open(model.dir.path());
  ModelConfig untied = model.options.config;
  untied.tie_word_embeddings = false;
  try {
    conveyor::load_stage_weights(tensors, untied, {4, 4, false, true});
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), conveyor::ErrorCode::kModelFormat);
    EXPECT_THAT(e.what(), HasSubstr("lm_head.weight"));
  }
  ModelConfig wider = model.options.config;
  wider.intermediate_size = 384;
  try {
    conveyor::load_stage_weights(tensors, wider, {0, 1, false, false});
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), conveyor::ErrorCode::kModelFormat);
    EXPECT_THAT(e.what(), HasSubstr("model.layers.0.mlp.gate_proj.weight"));
    EXPECT_THAT(e.what(), HasSubstr("[352, 128]"));
    EXPECT_THAT(e.what(), HasSubstr("[384, 128]"));
  }
  EXPECT_THROW(conveyor::load_stage_weights(tensors, model.options.config, {0, 5, false, false}),
               conveyor::Error);
}

TEST(LoadStageWeights, StageOfShardedModelMapsOnlyItsShards) {
  MadeModel model;
  make(model, {.n_layers = 8}, 512 * 1024);  // each layer is ~0.74 MB in f32: >= 1 shard each
  const ModelConfig& c = model.options.config;
  const SafeTensors tensors = SafeTensors::open(model.dir.path());
  int n_shards = 0;
  for (const auto& entry : std::filesystem::directory_iterator(model.dir.path())) {
    n_shards += entry.path().extension() == ".safetensors";
  }
  ASSERT_GE(n_shards, 8);
  const StageWeights first = conveyor::load_stage_weights(tensors, c, {0, 1, true, false});
  const std::size_t after_first = tensors.n_mapped_files();
  EXPECT_GE(after_first, 1u);
  EXPECT_LE(after_first, 4u);
  EXPECT_LT(after_first, static_cast<std::size_t>(n_shards));
  const StageWeights last = conveyor::load_stage_weights(tensors, c, {7, 8, false, true});
  EXPECT_LT(tensors.n_mapped_files(), static_cast<std::size_t>(n_shards));
  EXPECT_EQ(last.lm_head, expected(model, "lm_head.weight"));
  EXPECT_EQ(first.layers[0].w_up, expected(model, "model.layers.0.mlp.up_proj.weight"));
}

}  // namespace
