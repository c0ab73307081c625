// Random-weights models (EngineOptions::random_weights_seed): the counter-based draw, the
// recipes of each stage (shapes, spreads, keys, tied heads), independence from the partition,
// and the engine opened on a bare config.json.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "core/random_bits.hpp"
#include "model/make_model.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

int64_t shape_numel(const std::vector<int64_t>& shape) {
  if (shape.empty()) return 0;
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

TEST(RandomWeight, UniformOverTheRequestedRange) {
  const float mean = 0.25f, half_width = 0.5f;
  constexpr int kCount = 200'000;
  double sum = 0.0, sum_sq = 0.0;
  float lo = 1e9f, hi = -1e9f;
  for (int i = 0; i < kCount; ++i) {
    const float v = random_weight(0x1234, static_cast<uint64_t>(i), mean, half_width);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    sum += v;
    sum_sq += (v - mean) * (v - mean);
  }
  EXPECT_GE(lo, mean - half_width);
  EXPECT_LT(hi, mean + half_width);
  EXPECT_LT(lo, mean - 0.99f * half_width);  // the whole range is reached
  EXPECT_GT(hi, mean + 0.99f * half_width);
  EXPECT_NEAR(sum / kCount, mean, 0.005);
  // Uniform on [m - w, m + w): standard deviation w / sqrt(3).
  EXPECT_NEAR(std::sqrt(sum_sq / kCount), half_width / std::sqrt(3.0), 0.003);
}

TEST(RandomWeight, DependsOnKeyAndIndexOnly) {
  EXPECT_EQ(random_weight(7, 99, 0.0f, 1.0f), random_weight(7, 99, 0.0f, 1.0f));
  EXPECT_NE(random_weight(7, 99, 0.0f, 1.0f), random_weight(8, 99, 0.0f, 1.0f));
  EXPECT_NE(random_weight(7, 99, 0.0f, 1.0f), random_weight(7, 100, 0.0f, 1.0f));
  // The scale is applied to the same unit draw.
  EXPECT_FLOAT_EQ(random_weight(7, 99, 1.0f, 2.0f), 1.0f + 2.0f * random_weight(7, 99, 0.0f, 1.0f));
}

TEST(RandomStageDraws, ShapesSpreadsAndKeysFollowTheConfig) {
  ModelConfig config = preset_config("tiny");
  const StageDraws draws = random_stage_draws(config, {0, 4, true, true}, 11);
  EXPECT_EQ(draws.embedding.numel, config.vocab_size * config.hidden_size);
  EXPECT_EQ(draws.lm_head.numel, config.vocab_size * config.hidden_size);
  EXPECT_EQ(draws.final_norm.numel, config.hidden_size);
  EXPECT_FLOAT_EQ(draws.final_norm.mean, 1.0f);
  ASSERT_EQ(draws.layers.size(), 4u);

  std::set<uint64_t> keys{draws.embedding.key, draws.final_norm.key, draws.lm_head.key};
  int64_t values = draws.embedding.numel + draws.final_norm.numel + draws.lm_head.numel;
  for (const LayerDraws& layer : draws.layers) {
    for_each_layer_tensor(layer, [&](size_t index, const TensorDraw& draw) {
      EXPECT_EQ(draw.numel, shape_numel(layer_tensor_shape(config, index)))
          << kLayerTensorSuffixes[index];
      if (draw.numel == 0) return;  // no biases in a Llama
      EXPECT_GT(draw.half_width, 0.0f) << kLayerTensorSuffixes[index];
      keys.insert(draw.key);
      values += draw.numel;
    });
  }
  EXPECT_EQ(keys.size(), 3u + 4 * 9);  // every tensor has its own stream
  EXPECT_EQ(values, config.n_params());

  // q_proj: std 1.5 / sqrt(hidden) as conveyor-make-model draws it.
  EXPECT_NEAR(draws.layers[0].wq.half_width / std::sqrt(3.0),
              1.5 / std::sqrt(static_cast<double>(config.hidden_size)), 1e-7);

  // Another seed changes every key; the same seed reproduces them.
  EXPECT_NE(random_stage_draws(config, {0, 4, true, true}, 12).layers[2].w_up.key,
            draws.layers[2].w_up.key);
  EXPECT_EQ(random_stage_draws(config, {0, 4, true, true}, 11).layers[2].w_up.key,
            draws.layers[2].w_up.key);
}

TEST(RandomStageDraws, BiasesAndTiedHeads) {
  ModelConfig config = preset_config("tiny");
  apply_overrides(config, {.architecture = Architecture::kQwen2, .tie_word_embeddings = true});
  const StageDraws last = random_stage_draws(config, {2, 4, false, true}, 3);
  EXPECT_EQ(last.layers[0].bq.numel, config.q_dim());
  EXPECT_EQ(last.layers[1].bv.numel, config.kv_dim());
  EXPECT_EQ(last.embedding.numel, 0);
  // A tied head on a stage without the embedding draws the embedding's values.
  const StageDraws first = random_stage_draws(config, {0, 2, true, false}, 3);
  EXPECT_EQ(last.lm_head.key, first.embedding.key);
  EXPECT_EQ(last.lm_head.half_width, first.embedding.half_width);
  EXPECT_EQ(draw_tensor(last.lm_head), draw_tensor(first.embedding));
}

TEST(DrawStageWeights, StagesDrawTheWholeModelsValues) {
  const ModelConfig config = preset_config("tiny");
  const StageWeights whole = draw_stage_weights(random_stage_draws(config, {0, 4, true, true}, 5));
  const StageWeights middle =
      draw_stage_weights(random_stage_draws(config, {1, 3, false, false}, 5));
  EXPECT_EQ(whole.bytes(), config.n_params() * 4);
  ASSERT_EQ(middle.layers.size(), 2u);
  EXPECT_TRUE(middle.embedding.empty());
  EXPECT_TRUE(middle.lm_head.empty());
  for (size_t l = 0; l < 2; ++l) {
    zip_layer_tensors(middle.layers[l], whole.layers[l + 1],
                      [&](size_t index, const std::vector<float>& a, const std::vector<float>& b) {
                        EXPECT_EQ(a, b) << "layer " << l + 1 << " " << kLayerTensorSuffixes[index];
                      });
  }
  EXPECT_NE(whole.layers[0].wq, whole.layers[1].wq);
}

// ---- the engine ------------------------------------------------------------------------------

class RandomWeightsEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    ModelConfig config = preset_config("tiny");
    std::ofstream(config_path_) << config.to_json();
  }
  GenerateResult run(const std::filesystem::path& model, EngineOptions options, uint64_t seed) {
    options.random_weights_seed = seed;
    Engine engine = Engine::open(model, options);
    return engine.generate(test::mixed_requests(5), {.return_logits = true});
  }

  test::TempDir dir_{"conveyor-random-weights"};
  std::filesystem::path config_path_ = dir_.path() / "config.json";
};

TEST_F(RandomWeightsEngine, OpensAConfigFileAndIsPartitionIndependent) {
  const GenerateResult one = run(config_path_, {}, 42);
  // The directory works too; no safetensors file is needed or read.
  const GenerateResult split =
      run(dir_.path(), {.partition = "1,2,1", .schedule = {.prefill_micro_batches = 2}}, 42);
  ASSERT_EQ(one.requests.size(), split.requests.size());
  for (size_t r = 0; r < one.requests.size(); ++r) {
    EXPECT_EQ(one.requests[r].tokens, split.requests[r].tokens) << "request " << r;
    EXPECT_LT(test::max_relative_error(one.requests[r].logits, split.requests[r].logits), 1e-5);
  }
  // A real forward pass: finite logits with a spread, and tokens that are not all one id.
  std::set<int32_t> distinct;
  for (const RequestResult& r : one.requests) {
    for (float v : r.logits)
      ASSERT_TRUE(std::isfinite(v));
    distinct.insert(r.tokens.begin(), r.tokens.end());
  }
  EXPECT_GT(distinct.size(), 1u);
}

TEST_F(RandomWeightsEngine, TheSeedChoosesTheWeights) {
  const GenerateResult a = run(config_path_, {}, 1);
  const GenerateResult b = run(config_path_, {}, 2);
  EXPECT_GT(test::relative_error(a.requests[0].logits, b.requests[0].logits), 0.1);
}

TEST_F(RandomWeightsEngine, MissingModelAndCheckpointWithoutSeedAreNamed) {
  EngineOptions options;
  options.random_weights_seed = 1;
  test::expect_invalid([&] { Engine::open(dir_.path() / "nope.json", options); },
                       {"nope.json", "does not exist", "config.json"});
  // Without the seed a config file is not a model directory.
  test::expect_invalid([&] { Engine::open(config_path_, {}); },
                       {"config.json", "model directory", "safetensors"});
}

TEST_F(RandomWeightsEngine, AModelLargerThanTheHostIsRefusedBeforeAllocating) {
  // ~0.9 trillion parameters: 3.4 TB of fp32, more than any host this runs on.
  ModelConfig huge = preset_config("tiny");
  huge.hidden_size = 16384;
  huge.intermediate_size = 65536;
  huge.n_heads = 128;
  huge.n_kv_heads = 8;
  huge.head_dim = 128;
  huge.n_layers = 200;
  std::ofstream(config_path_) << huge.to_json();
  EngineOptions options;
  options.random_weights_seed = 1;
  test::expect_error([&] { Engine::open(config_path_, options); }, ErrorCode::kOutOfMemory,
                     {"host memory", "fp32 weights", "is available", "--backend cuda"});
}

}  // namespace
}  // namespace conveyor
