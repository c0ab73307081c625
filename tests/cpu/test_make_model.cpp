// Tests of conveyor-make-model's library part and binary: presets, overrides, deterministic
// bytes, weight statistics, sharding and the command line.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"
#include "conveyor/safetensors.hpp"
#include "core/dtype_convert.hpp"
#include "model/make_model.hpp"

namespace {

using conveyor::Architecture;
using conveyor::DType;
using conveyor::MakeModelOptions;
using conveyor::ModelConfig;
using conveyor::SafeTensors;
using ::testing::HasSubstr;

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

MakeModelOptions tiny_options(const std::filesystem::path& dir, uint64_t seed = 7) {
  MakeModelOptions options;
  options.config = conveyor::preset_config("tiny");
  options.seed = seed;
  options.out_dir = dir;
  return options;
}

TEST(MakeModel, PresetParameterCounts) {
  const ModelConfig tiny = conveyor::preset_config("tiny");
  EXPECT_NO_THROW(tiny.validate());
  // layer: norms 256 + q 16384 + k/v 16384 + o 16384 + mlp 135168 = 184576
  EXPECT_EQ(tiny.layer_params(), 184576);
  EXPECT_EQ(tiny.n_params(), 4 * 184576 + 2 * 512 * 128 + 128);  // 869504
  const ModelConfig small = conveyor::preset_config("small");
  EXPECT_NO_THROW(small.validate());
  EXPECT_EQ(small.head_dim, 64);
  EXPECT_EQ(small.max_position_embeddings, 2048);
  // layer: 1536 + 589824 + 393216 + 589824 + 4718592 = 6292992
  EXPECT_EQ(small.layer_params(), 6292992);
  EXPECT_EQ(small.n_params(), 12 * 6292992 + 2 * 32000 * 768 + 768);  // 124668672
  try {
    conveyor::preset_config("huge");
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), conveyor::ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("huge"));
    EXPECT_THAT(e.what(), HasSubstr("tiny"));
  }
}

TEST(MakeModel, OverridesAndFlags) {
  ModelConfig c = conveyor::preset_config("tiny");
  conveyor::ConfigOverrides overrides;
  overrides.architecture = conveyor::parse_architecture_flag("qwen2");
  overrides.n_layers = 2;
  overrides.vocab_size = 100;
  overrides.tie_word_embeddings = true;
  overrides.rope_scaling = conveyor::parse_rope_scaling_flag("llama3");
  conveyor::apply_overrides(c, overrides);
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.vocab_size, 100);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.type, conveyor::RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_NO_THROW(c.validate());

  conveyor::apply_overrides(c, {.architecture = Architecture::kLlama, .vocab_size = 2});
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_TRUE(c.eos_token_ids.empty());  // token 2 no longer exists
  EXPECT_NO_THROW(c.validate());

  const conveyor::RopeScaling linear = conveyor::parse_rope_scaling_flag("linear:2.5");
  EXPECT_EQ(linear.type, conveyor::RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(linear.factor, 2.5);
  EXPECT_EQ(conveyor::parse_rope_scaling_flag("none").type, conveyor::RopeScalingType::kNone);
  for (const char* bad : {"linear:", "linear:x", "linear:-1", "yarn", "linear:2x"}) {
    EXPECT_THROW(conveyor::parse_rope_scaling_flag(bad), conveyor::Error) << bad;
  }
  EXPECT_EQ(conveyor::parse_architecture_flag("mistral"), Architecture::kMistral);
  EXPECT_THROW(conveyor::parse_architecture_flag("gpt2"), conveyor::Error);
}

TEST(MakeModel, GeneratorIsPinnedAndOrderIndependent) {
  // FNV-1a test vectors.
  EXPECT_EQ(conveyor::fnv1a_64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(conveyor::fnv1a_64("a"), 0xaf63dc4c8601ec8cull);
  // The first values of one stream, pinned so a change of generator (which would change every
  // fixture made from a seed) is noticed.
  const conveyor::TensorRecipe recipe{"golden", {6}, 0.0, 1.0};
  const std::vector<float> v = conveyor::generate_tensor(recipe, 42);
  const uint32_t expected_bits[] = {0x3f98db42, 0x3dd1af86, 0x3f0a7173,
                                    0x3f100b7b, 0x3f8478f4, 0x3dec7a34};
  for (int i = 0; i < 6; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], sizeof bits);
    EXPECT_EQ(bits, expected_bits[i]) << i;
  }
  // Same (seed, name) -> same values; other seed or name -> other values.
  EXPECT_EQ(conveyor::generate_tensor(recipe, 42), v);
  EXPECT_NE(conveyor::generate_tensor(recipe, 43), v);
  EXPECT_NE(conveyor::generate_tensor({"golden2", {6}, 0.0, 1.0}, 42), v);
  // A longer tensor starts with the same values.
  const std::vector<float> longer = conveyor::generate_tensor({"golden", {2, 5}, 0.0, 1.0}, 42);
  EXPECT_TRUE(std::equal(v.begin(), v.end(), longer.begin()));
}

TEST(MakeModel, NormalSamplesHaveTheRequestedMoments) {
  const std::vector<float> v = conveyor::generate_tensor({"stats", {200000}, 0.5, 2.0}, 1);
  double sum = 0.0;
  double sum_sq = 0.0;
  int64_t within_one_sigma = 0;
  for (float x : v) {
    sum += x;
    sum_sq += double(x) * x;
    within_one_sigma += std::fabs(x - 0.5) < 2.0;
  }
  const double mean = sum / v.size();
  const double std = std::sqrt(sum_sq / v.size() - mean * mean);
  EXPECT_NEAR(mean, 0.5, 0.02);
  EXPECT_NEAR(std, 2.0, 0.02);
  EXPECT_NEAR(double(within_one_sigma) / v.size(), 0.6827, 0.005);
}

TEST(MakeModel, RecipesCoverTheModelWithSensibleScales) {
  ModelConfig c = conveyor::preset_config("tiny");
  std::vector<conveyor::TensorRecipe> recipes = conveyor::model_tensor_recipes(c);
  EXPECT_EQ(recipes.size(), 1u + 4 * 9 + 2);
  int64_t params = 0;
  for (const auto& r : recipes) {
    int64_t n = 1;
    for (int64_t d : r.shape)
      n *= d;
    params += n;
    if (r.name.ends_with("layernorm.weight") || r.name == "model.norm.weight") {
      EXPECT_EQ(r.mean, 1.0) << r.name;
    } else {
      EXPECT_EQ(r.mean, 0.0) << r.name;
    }
  }
  EXPECT_EQ(params, c.n_params());
  EXPECT_EQ(recipes.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(recipes.back().name, "lm_head.weight");
  EXPECT_NEAR(recipes.back().std, 3.0 / std::sqrt(128.0), 1e-12);  // logits std ~3

  c.architecture = Architecture::kQwen2;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  recipes = conveyor::model_tensor_recipes(c);
  EXPECT_EQ(recipes.size(), 1u + 4 * 12 + 1);
  EXPECT_EQ(recipes.back().name, "model.norm.weight");
  params = 0;
  for (const auto& r : recipes) {
    int64_t n = 1;
    for (int64_t d : r.shape)
      n *= d;
    params += n;
  }
  EXPECT_EQ(params, c.n_params());
}

TEST(MakeModel, WritesALoadableModel) {
  conveyor::test::TempDir dir("conveyor-make-model");
  MakeModelOptions options = tiny_options(dir.path());
  options.dtype = DType::kBF16;
  const conveyor::MakeModelResult result = conveyor::make_model(options);
  EXPECT_EQ(result.n_params, 869504);
  EXPECT_EQ(result.data_bytes, 869504u * 2);
  ASSERT_EQ(result.files.size(), 2u);
  EXPECT_EQ(result.files[0], dir.path() / "config.json");
  EXPECT_EQ(result.files[1], dir.path() / "model.safetensors");

  const ModelConfig loaded = ModelConfig::load(dir.path());
  EXPECT_EQ(loaded.torch_dtype, DType::kBF16);
  EXPECT_EQ(loaded.n_params(), 869504);
  EXPECT_EQ(loaded.to_json().size(), [&] {
    ModelConfig c = options.config;
    c.torch_dtype = DType::kBF16;
    return c.to_json().size();
  }());

  const SafeTensors tensors = SafeTensors::open(dir.path());
  for (const conveyor::TensorRecipe& recipe : conveyor::model_tensor_recipes(loaded)) {
    SCOPED_TRACE(recipe.name);
    ASSERT_TRUE(tensors.contains(recipe.name));
    EXPECT_EQ(tensors.info(recipe.name).dtype, DType::kBF16);
    const std::vector<float> got = tensors.load_f32(recipe.name, recipe.shape);
    const std::vector<float> want = conveyor::generate_tensor(recipe, options.seed);
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); i += 97) {
      ASSERT_EQ(got[i], conveyor::bf16_to_f32(conveyor::f32_to_bf16(want[i])));
    }
  }
  EXPECT_GE(std::filesystem::file_size(dir.path() / "model.safetensors"), 869504u * 2);
}

TEST(MakeModel, SameSeedSameBytesOtherSeedOtherBytes) {
  conveyor::test::TempDir a("conveyor-make-model-a");
  conveyor::test::TempDir b("conveyor-make-model-b");
  conveyor::test::TempDir c("conveyor-make-model-c");
  conveyor::make_model(tiny_options(a.path(), 11));
  conveyor::make_model(tiny_options(b.path(), 11));
  conveyor::make_model(tiny_options(c.path(), 12));
  const std::string bytes_a = read_bytes(a.path() / "model.safetensors");
  EXPECT_GT(bytes_a.size(), 869504u * 4);
  EXPECT_EQ(bytes_a, read_bytes(b.path() / "model.safetensors"));
  EXPECT_NE(bytes_a, read_bytes(c.path() / "model.safetensors"));
  EXPECT_EQ(read_bytes(a.path() / "config.json"), read_bytes(c.path() / "config.json"));
}

TEST(MakeModel, ShardedOutputMatchesSingleFile) {
  conveyor::test::TempDir single("conveyor-make-model-single");
  conveyor::test::TempDir sharded("conveyor-make-model-sharded");
  conveyor::make_model(tiny_options(single.path()));
  MakeModelOptions options = tiny_options(sharded.path());
  options.shard_max_bytes = 1 << 20;  // 1 MiB: the 3.5 MB model takes 4-5 shards
  const conveyor::MakeModelResult result = conveyor::make_model(options);
  ASSERT_GE(result.files.size(), 2u + 3u);
  EXPECT_EQ(result.files[1], sharded.path() / "model.safetensors.index.json");
  const std::size_t n_shards = result.files.size() - 2;
  EXPECT_EQ(result.files[2].filename().string(),
            fmt::format("model-00001-of-{:05d}.safetensors", n_shards));
  for (std::size_t i = 2; i < result.files.size(); ++i) {
    // Every shard is within the limit (no single tiny tensor exceeds it).
    EXPECT_LE(std::filesystem::file_size(result.files[i]), (1u << 20) + 4096u);
  }
  EXPECT_FALSE(std::filesystem::exists(sharded.path() / "model.safetensors"));

  const nlohmann::json index =
      nlohmann::json::parse(read_bytes(sharded.path() / "model.safetensors.index.json"));
  EXPECT_EQ(index.at("metadata").at("total_size"), 869504 * 4);
  EXPECT_EQ(index.at("weight_map").size(), 39u);

  const SafeTensors a = SafeTensors::open(single.path());
  const SafeTensors b = SafeTensors::open(sharded.path());
  EXPECT_EQ(b.n_mapped_files(), 0u);
  const std::vector<int64_t> embed_shape = {512, 128};
  EXPECT_EQ(a.load_f32("model.embed_tokens.weight", embed_shape),
            b.load_f32("model.embed_tokens.weight", embed_shape));
  EXPECT_EQ(b.n_mapped_files(), 1u);
  const std::vector<int64_t> head_shape = {512, 128};
  EXPECT_EQ(a.load_f32("lm_head.weight", head_shape), b.load_f32("lm_head.weight", head_shape));
  EXPECT_EQ(b.n_mapped_files(), 2u);
}

TEST(MakeModel, ReplacesEarlierModelFilesOnly) {
  conveyor::test::TempDir dir("conveyor-make-model-replace");
  MakeModelOptions options = tiny_options(dir.path());
  options.shard_max_bytes = 1 << 20;
  conveyor::make_model(options);
  { std::ofstream(dir.path() / "notes.txt") << "keep me"; }
  options.shard_max_bytes = 0;
  options.config.n_layers = 2;
  conveyor::make_model(options);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "notes.txt"));
  int n_files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++n_files;
  }
  EXPECT_EQ(n_files, 3);  // config.json, model.safetensors, notes.txt
  EXPECT_EQ(ModelConfig::load(dir.path()).n_layers, 2);
  EXPECT_FALSE(SafeTensors::open(dir.path()).contains("model.layers.2.mlp.up_proj.weight"));
}

TEST(MakeModel, RejectsBadOptions) {
  MakeModelOptions options = tiny_options("");
  EXPECT_THROW(conveyor::make_model(options), conveyor::Error);
  conveyor::test::TempDir dir("conveyor-make-model-bad");
  options.out_dir = dir.path();
  options.shard_max_bytes = -1;
  EXPECT_THROW(conveyor::make_model(options), conveyor::Error);
  options.shard_max_bytes = 0;
  options.config.n_kv_heads = 3;
  EXPECT_THROW(conveyor::make_model(options), conveyor::Error);
}

TEST(MakeModelCli, WritesTinyQwen2WithBiasAndTiedLlama3Llama) {
  const std::filesystem::path binary = conveyor::test::binary_path("conveyor-make-model");
  if (!std::filesystem::exists(binary)) GTEST_SKIP() << binary << " is not built";
  conveyor::test::TempDir dir("conveyor-make-model-cli");

  std::string output;
  const std::string qwen = (dir.path() / "qwen").string();
  int status = conveyor::test::run_command(
      binary.string() + " --preset tiny --arch qwen2 --layers 2 --dtype f16 --seed 3 --out " + qwen,
      &output);
  ASSERT_EQ(status, 0) << output;
  EXPECT_THAT(output, HasSubstr("Qwen2ForCausalLM"));
  EXPECT_THAT(output, HasSubstr("model.safetensors"));
  ModelConfig c = ModelConfig::load(qwen);
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.torch_dtype, DType::kF16);
  EXPECT_TRUE(SafeTensors::open(qwen).contains("model.layers.1.self_attn.k_proj.bias"));

  const std::string llama = (dir.path() / "llama").string();
  status = conveyor::test::run_command(
      binary.string() + " --preset tiny --tie-embeddings --rope-scaling llama3 --vocab 300 " +
          "--shard-mb 1 --out " + llama,
      &output);
  ASSERT_EQ(status, 0) << output;
  c = ModelConfig::load(llama);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_EQ(c.rope_scaling.type, conveyor::RopeScalingType::kLlama3);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "llama" / "model.safetensors.index.json"));
  EXPECT_FALSE(SafeTensors::open(llama).contains("lm_head.weight"));

  // --config takes the shape of an existing config.json.
  const std::string copy = (dir.path() / "copy").string();
  status = conveyor::test::run_command(
      binary.string() + " --config " + llama + "/config.json --out " + copy, &output);
  ASSERT_EQ(status, 0) << output;
  EXPECT_EQ(ModelConfig::load(copy).vocab_size, 300);

  status = conveyor::test::run_command(
      binary.string() + " --preset tiny --rope-scaling yarn --out " + copy, &output);
  EXPECT_NE(status, 0);
  EXPECT_THAT(output, HasSubstr("yarn"));
  status = conveyor::test::run_command(binary.string() + " --preset giant --out " + copy, &output);
  EXPECT_NE(status, 0);
}

}  // namespace
