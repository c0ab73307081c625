// Tests of GGUF models: metadata -> ModelConfig, the model-level tensor checks (docs/gguf.md),
// the Q/K permutation, engines on GGUF files written from made models (same logits as the
// safetensors original), and — when the asset is fetched — SmolLM2-135M-Instruct Q4_1 against
// the numpy reference (tests/data/smollm2_q4_1*.json) on 1, 2, 3 and 5 stages.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/checkpoint.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/gguf.hpp"
#include "conveyor/safetensors.hpp"
#include "conveyor/tokenizer.hpp"
#include "core/dtype_convert.hpp"
#include "model/gguf_model.hpp"
#include "model/gguf_writer.hpp"
#include "model/make_model.hpp"
#include "model/safetensors_writer.hpp"
#include "model/weights.hpp"
#include "observe/npy.hpp"

namespace conveyor {
namespace {

constexpr uint32_t kQ8_0 = 8;

TEST(GgufNames, HuggingFaceNamesMapToLlamaCppNames) {
  EXPECT_EQ(gguf_tensor_name("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.12.self_attn.k_proj.bias"), "blk.12.attn_k.bias");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.post_attention_layernorm.weight"),
            "blk.0.ffn_norm.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.mlp.down_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.3.mlp.down_proj.bias"), std::nullopt);
  EXPECT_EQ(gguf_tensor_name("transformer.h.0.attn"), std::nullopt);
}

TEST(GgufPermutation, RowsMoveAsLlamaCppsConverterMovesThem) {
  // 2 heads of head_dim 4, 1 column: HF row h*4 + s*2 + i comes from GGUF row h*4 + 2i + s.
  std::vector<float> gguf = {0, 1, 2, 3, 4, 5, 6, 7};
  unpermute_qk_rows(gguf, 8, 1, 2);
  EXPECT_EQ(gguf, (std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7}));
  // Permute then unpermute is the identity on a [rows, cols] matrix.
  std::vector<float> m(24 * 3);
  std::iota(m.begin(), m.end(), 0.0f);
  std::vector<float> copy = m;
  permute_qk_rows(copy, 24, 3, 3);
  EXPECT_NE(copy, m);
  unpermute_qk_rows(copy, 24, 3, 3);
  EXPECT_EQ(copy, m);
}

// A made tiny model, its safetensors directory and GGUF files written from it.
class GgufFromMadeModel : public ::testing::Test {
 protected:
  ModelConfig make(const ConfigOverrides& overrides, uint64_t seed = 3) {
    MakeModelOptions options;
    options.config = preset_config("tiny");
    apply_overrides(options.config, overrides);
    options.config.n_layers = 3;
    options.seed = seed;
    options.out_dir = dir_.path() / "hf";
    make_model(options);
    return options.config;
  }

  std::filesystem::path write_gguf(const ModelConfig& config, uint32_t matrix_type = 0,
                                   uint32_t embedding_type = 0) {
    const SafeTensors tensors = SafeTensors::open(dir_.path() / "hf");
    const auto path = dir_.path() / fmt::format("model-{}-{}.gguf", matrix_type, embedding_type);
    write_gguf_model(config, tensors,
                     GgufModelOptions{.matrix_type = matrix_type, .embedding_type = embedding_type},
                     path);
    return path;
  }

  // Greedy generation with logits on `stages` stages.
  static GenerateResult run(const std::filesystem::path& model, int stages) {
    Engine engine = Engine::open(model, EngineOptions{.n_stages = stages});
    return engine.generate(test::mixed_requests(4), GenerateOptions{.return_logits = true});
  }

  static void expect_same(const GenerateResult& a, const GenerateResult& b, double tolerance) {
    ASSERT_EQ(a.requests.size(), b.requests.size());
    for (size_t r = 0; r < a.requests.size(); ++r) {
      EXPECT_EQ(a.requests[r].tokens, b.requests[r].tokens) << "request " << r;
      EXPECT_LE(test::max_relative_error(a.requests[r].logits, b.requests[r].logits), tolerance)
          << "request " << r;
    }
  }

  test::TempDir dir_;
};

TEST_F(GgufFromMadeModel, F32GgufGivesTheSafetensorsLogitsForEachArchitecture) {
  const std::vector<std::pair<std::string, ConfigOverrides>> cases = {
      {"llama gqa", {.architecture = Architecture::kLlama}},
      {"llama tied + llama3 rope",
       {.architecture = Architecture::kLlama,
        .tie_word_embeddings = true,
        .rope_scaling = parse_rope_scaling_flag("llama3")}},
      {"llama linear rope",
       {.architecture = Architecture::kLlama, .rope_scaling = parse_rope_scaling_flag("linear:2")}},
      {"qwen2 biases", {.architecture = Architecture::kQwen2}},
  };
  for (const auto& [name, overrides] : cases) {
    SCOPED_TRACE(name);
    const ModelConfig config = make(overrides);
    const auto gguf = write_gguf(config);
    const Checkpoint checkpoint = Checkpoint::open(gguf);
    EXPECT_EQ(checkpoint.config.architecture, config.architecture);
    EXPECT_EQ(checkpoint.config.tie_word_embeddings, config.tie_word_embeddings);
    EXPECT_EQ(checkpoint.config.attention_bias, config.attention_bias);
    // llama3 scaling arrives as per-frequency factors: the same frequencies up to f32 rounding.
    const bool factors = config.rope_scaling.type == RopeScalingType::kLlama3;
    EXPECT_EQ(checkpoint.config.rope_scaling.type,
              factors ? RopeScalingType::kFrequencyFactors : config.rope_scaling.type);
    expect_same(run(gguf, 2), run(dir_.path() / "hf", 2), factors ? 1e-5 : 1e-6);
  }
}

TEST_F(GgufFromMadeModel, F32AndBf16TensorsAreUsedInPlaceQueriesAndKeysFlagged) {
  for (Architecture arch : {Architecture::kLlama, Architecture::kQwen2}) {
    SCOPED_TRACE(architecture_name(arch));
    const ModelConfig config = make({.architecture = arch});
    for (uint32_t type : {0u, 30u}) {  // F32, BF16
      const DType dtype = type == 0 ? DType::kF32 : DType::kBF16;
      const Checkpoint checkpoint = Checkpoint::open(write_gguf(config, type, type));
      const TensorSource& tensors = *checkpoint.tensors;
      for (const char* name :
           {"model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
            "model.layers.1.self_attn.k_proj.weight", "model.embed_tokens.weight"}) {
        SCOPED_TRACE(name);
        const std::vector<int64_t> shape = tensor_shape(config, name);
        std::vector<float> loaded = tensors.load_f32(name, shape);
        const DType other = dtype == DType::kF32 ? DType::kBF16 : DType::kF32;
        EXPECT_FALSE(tensors.stored(name, shape, other).has_value());
        const std::optional<StoredTensor> t = tensors.stored(name, shape, dtype);
        ASSERT_TRUE(t.has_value());
        // Llama's queries and keys are in llama.cpp's row order in GGUF: in place, flagged, and
        // equal to load_f32's Hugging Face rows permuted back.
        const std::string_view n(name);
        const bool permuted = arch == Architecture::kLlama &&
                              (n.find("q_proj") != n.npos || n.find("k_proj") != n.npos);
        EXPECT_EQ(t->rope_pairs_adjacent, permuted);
        if (permuted) {
          permute_qk_rows(loaded, shape[0], shape[1],
                          n.find("q_proj") != n.npos ? config.n_heads : config.n_kv_heads);
        }
        ASSERT_EQ(t->bytes.size(), loaded.size() * dtype_size(dtype));
        for (size_t i = 0; i < loaded.size(); ++i) {
          const float v = dtype == DType::kF32
                              ? reinterpret_cast<const float*>(t->bytes.data())[i]
                              : bf16_to_f32(reinterpret_cast<const uint16_t*>(t->bytes.data())[i]);
          ASSERT_EQ(v, loaded[i]) << i;
        }
      }
    }
  }
}

TEST_F(GgufFromMadeModel, EnginesComputeFromTheMappingUnlessToldToCopy) {
  const ModelConfig config = make({});
  for (uint32_t type : {0u, 30u}) {  // F32, BF16 (in place under --dtype bf16)
    SCOPED_TRACE(type);
    const auto gguf = write_gguf(config, type, type);
    const DType dtype = type == 0 ? DType::kF32 : DType::kBF16;
    Engine mapped = Engine::open(gguf, {.n_stages = 2, .device = {.dtype = dtype}});
    Engine copied =
        Engine::open(gguf, {.n_stages = 2, .device = {.dtype = dtype, .map_weights = false}});
    for (const std::string& report : mapped.stage_reports())
      EXPECT_THAT(report, ::testing::HasSubstr("read in place from the checkpoint's mapping"));
    for (const std::string& report : copied.stage_reports())
      EXPECT_THAT(report, ::testing::Not(::testing::HasSubstr("in place")));
    // Mapped, the Llama queries and keys stay in llama.cpp's row order and q.k sums its products
    // in that order: the same logits up to rounding, the same tokens.
    const GenerateOptions options{.return_logits = true};
    expect_same(mapped.generate(test::mixed_requests(3), options),
                copied.generate(test::mixed_requests(3), options), 2e-6);
  }
}

TEST_F(GgufFromMadeModel, APlaceholderVocabularyIsAWholeSentencePieceTokenizer) {
  const ModelConfig config = make({});
  const SafeTensors tensors = SafeTensors::open(dir_.path() / "hf");
  const auto path = dir_.path() / "placeholder.gguf";
  write_gguf_model(config, tensors,
                   GgufModelOptions{.add_tokenizer = placeholder_tokenizer(config.vocab_size)},
                   path);
  const Tokenizer tokenizer = Tokenizer::from_gguf(GgufFile::open(path));
  EXPECT_EQ(tokenizer.vocab_size(), config.vocab_size);
  // Byte fallback: no placeholder word matches, so the text is BOS, SentencePiece's "▁" prefix
  // and the UTF-8 bytes, each byte b as id 3 + b.
  const std::vector<int32_t> ids = tokenizer.encode("A\xC3\xA9");
  EXPECT_EQ(ids,
            (std::vector<int32_t>{1, 3 + 0xE2, 3 + 0x96, 3 + 0x81, 3 + 0x41, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tokenizer.decode(std::span(ids).subspan(4)), "A\xC3\xA9");
  EXPECT_EQ(tokenizer.token_text(300), "\u2581w300");
  // And the same logits as the safetensors directory.
  expect_same(run(path, 2), run(dir_.path() / "hf", 2), 1e-6);
  EXPECT_THAT(test::error_of([] { (void)placeholder_tokenizer(258); }),
              ::testing::HasSubstr("at least 259 tokens"));
}

TEST_F(GgufFromMadeModel, QuantizedGgufEqualsItsDequantizedSafetensorsExport) {
  const ModelConfig config = make({});
  const auto gguf = write_gguf(config, kQ8_0, kQ8_0);
  const Checkpoint checkpoint = Checkpoint::open(gguf);
  EXPECT_THAT(checkpoint.description, ::testing::HasSubstr("Q8_0"));
  // The same fp32 weights as a Hugging Face directory give bit-identical logits.
  write_safetensors_model(checkpoint.config, *checkpoint.tensors, DType::kF32,
                          dir_.path() / "export");
  const GenerateResult from_gguf = run(gguf, 3);
  expect_same(from_gguf, run(dir_.path() / "export", 3), 0.0);
  // And Q8_0 stays close to the original weights.
  const GenerateResult original = run(dir_.path() / "hf", 3);
  for (size_t r = 0; r < original.requests.size(); ++r) {
    EXPECT_LE(test::relative_error(from_gguf.requests[r].logits, original.requests[r].logits),
              0.05);
  }
}

TEST_F(GgufFromMadeModel, ModelPathsResolveToTheGgufInADirectory) {
  const ModelConfig config = make({});
  const auto gguf = write_gguf(config);
  const auto holder = dir_.path() / "holder";
  std::filesystem::create_directories(holder);
  std::filesystem::copy_file(gguf, holder / "m.gguf");
  EXPECT_EQ(locate_model(holder).format, CheckpointFormat::kGguf);
  EXPECT_EQ(locate_model(holder).path, holder / "m.gguf");
  EXPECT_EQ(ModelConfig::load(holder).n_layers, 3);
  EXPECT_EQ(locate_model(dir_.path() / "hf").format, CheckpointFormat::kSafetensors);
  std::filesystem::copy_file(gguf, holder / "n.gguf");
  test::expect_invalid([&] { locate_model(holder); }, {"2 .gguf files", "m.gguf, n.gguf"});
  std::filesystem::create_directories(dir_.path() / "empty");
  test::expect_invalid([&] { locate_model(dir_.path() / "empty"); },
                       {"neither config.json", ".gguf"});
  test::expect_invalid([&] { locate_model(dir_.path() / "missing"); }, {"does not exist"});
}

// ---- model-level checks on edited files ------------------------------------------------------

class GgufModelChecks : public GgufFromMadeModel {
 protected:
  void SetUp() override {
    config_ = make({});
    tensors_ = std::make_unique<SafeTensors>(SafeTensors::open(dir_.path() / "hf"));
  }

  // Writes the model with `edit` applied to its writer and returns Checkpoint::open's error.
  void expect_refused(const std::function<void(GgufWriter&)>& edit,
                      const std::vector<std::string>& parts) {
    GgufWriter w = gguf_model_writer(config_, *tensors_, {});
    edit(w);
    const auto path = dir_.path() / "edited.gguf";
    w.write(path);
    std::vector<std::string> all = parts;
    all.push_back("edited.gguf");
    test::expect_error([&] { Checkpoint::open(path); }, ErrorCode::kModelFormat, all);
  }

  ModelConfig config_;
  std::unique_ptr<SafeTensors> tensors_;
};

TEST_F(GgufModelChecks, MetadataProblemsAreNamed) {
  expect_refused([](GgufWriter& w) { w.erase_kv("general.architecture"); },
                 {"general.architecture", "missing"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("general.architecture");
        w.add_string("general.architecture", "gemma2");
      },
      {"\"gemma2\" is not supported", "llama", "qwen2"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("llama.attention.head_count");
        w.add_u32("llama.attention.head_count", 0);
      },
      {"llama.attention.head_count", "0"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("llama.attention.head_count");
        w.add_u32("llama.attention.head_count", 3);  // 128 % 3 != 0
        w.erase_kv("llama.attention.head_count_kv");
        w.add_u32("llama.attention.head_count_kv", 3);
      },
      {"not a positive divisor", "128"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("llama.block_count");
        w.add_string("llama.block_count", "3");
      },
      {"llama.block_count", "must be an integer but is a string"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("llama.block_count");
        w.add_i32("llama.block_count", -1);
      },
      {"num_hidden_layers = -1"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("llama.attention.layer_norm_rms_epsilon");
        w.add_f32("llama.attention.layer_norm_rms_epsilon", std::nanf(""));
      },
      {"rms_norm_eps = nan"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("tokenizer.ggml.bos_token_id");
        w.add_u32("tokenizer.ggml.bos_token_id", 512);
      },
      {"bos_token_id = 512", "[0, 512)"});
  expect_refused([](GgufWriter& w) { w.add_u32("llama.expert_count", 8); }, {"mixture-of-experts"});
  expect_refused([](GgufWriter& w) { w.add_string("llama.rope.scaling.type", "yarn"); },
                 {"\"yarn\" is not implemented"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_kv("llama.rope.dimension_count");
        w.add_u32("llama.rope.dimension_count", 16);
      },
      {"partial rotary"});
  expect_refused(
      [](GgufWriter& w) {
        w.add_strings("tokenizer.ggml.tokens", std::vector<std::string>(600, "x"));
      },
      {"600 tokens", "512"});
}

TEST_F(GgufModelChecks, TensorProblemsAreNamed) {
  expect_refused([](GgufWriter& w) { w.erase_tensor("blk.1.ffn_up.weight"); },
                 {"blk.1.ffn_up.weight", "missing"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_tensor("blk.0.attn_k.weight");
        w.add_tensor("blk.0.attn_k.weight", 0, {128, 96},
                     quantize_values(0, std::vector<float>(128 * 96)));
      },
      {"blk.0.attn_k.weight", "[96, 128]", "implies [64, 128]"});
  expect_refused(
      [](GgufWriter& w) {
        w.add_tensor("blk.3.ffn_up.weight", 0, {128, 352},
                     quantize_values(0, std::vector<float>(128 * 352)));
      },
      {"blk.3.ffn_up.weight", "beyond the 3 layers"});
  expect_refused(
      [](GgufWriter& w) {
        w.add_tensor("blk.0.attn_q_norm.weight", 0, {32},
                     quantize_values(0, std::vector<float>(32)));
      },
      {"blk.0.attn_q_norm.weight", "not part of"});
  expect_refused(
      [](GgufWriter& w) {
        w.erase_tensor("blk.2.ffn_down.weight");  // [128, 352] as Q8_1: 11 blocks of 36 bytes a row
        w.add_tensor("blk.2.ffn_down.weight", 9, {352, 128}, std::vector<std::byte>(128 * 11 * 36));
      },
      {"blk.2.ffn_down.weight", "Q8_1", "unsupported quant type", "Q4_K"});
}

// ---- SmolLM2-135M-Instruct Q4_1 (fetched asset) ---------------------------------------------

constexpr const char* kSmolLm2 = "SmolLM2-135M-Instruct.Q4_1.gguf";

nlohmann::json read_fixture(const std::string& name) {
  nlohmann::json j;
  std::ifstream(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / name) >> j;
  return j;
}

class SmolLm2 : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = test::asset_path(kSmolLm2);
    if (!path_) GTEST_SKIP() << test::missing_asset_reason(kSmolLm2, "smollm2");
  }
  std::optional<std::filesystem::path> path_;
};

TEST_F(SmolLm2, MetadataGivesTheModelShape) {
  const Checkpoint checkpoint = Checkpoint::open(*path_);
  const ModelConfig& c = checkpoint.config;
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_FLOAT_EQ(static_cast<float>(c.rms_norm_eps), 1e-5f);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_EQ(checkpoint.description, "GGUF v3, 272 tensors: 210 Q4_1, 61 F32, 1 Q8_0");
}

TEST_F(SmolLm2, EveryTensorMatchesTheNumpyDequantization) {
  const Checkpoint checkpoint = Checkpoint::open(*path_);
  const nlohmann::json fixture = read_fixture("smollm2_q4_1_tensors.json");
  int checked = 0;
  for (const auto& t : fixture["tensors"]) {
    const auto name = t["hf_name"].get<std::string>();
    const auto shape = t["shape"].get<std::vector<int64_t>>();
    const std::vector<float> values = checkpoint.tensors->load_f32(name, shape);
    uint64_t sum = 0, weighted = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      const uint64_t bits = std::bit_cast<uint32_t>(values[i]);
      sum += bits;
      weighted += (i + 1) * bits;
    }
    EXPECT_EQ(fmt::format("{:016x}", sum), t["bits_sum_u64"].get<std::string>()) << name;
    EXPECT_EQ(fmt::format("{:016x}", weighted), t["bits_wsum_u64"].get<std::string>()) << name;
    for (size_t i = 0; i < 8; ++i) {
      EXPECT_EQ(fmt::format("{:08x}", std::bit_cast<uint32_t>(values[i])), t["first8"][i]) << name;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 272);
  uint64_t tensor_bytes = 0;
  const GgufFile file = GgufFile::open(*path_);
  for (const GgufTensorInfo& info : file.contents().tensors)
    tensor_bytes += info.n_bytes;
  EXPECT_EQ(checkpoint.tensors->bytes_read(), tensor_bytes);
}

TEST_F(SmolLm2, LogitsMatchTheNumpyReferenceOnEveryPipelineShape) {
  const nlohmann::json fixture = read_fixture("smollm2_q4_1.json");
  const NpyMatrix reference =
      read_npy_f32(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / "smollm2_q4_1.logits.npy");
  ASSERT_EQ(reference.cols, 49152);
  const auto greedy = fixture["greedy_ids"].get<std::vector<int32_t>>();
  Request request{.prompt = fixture["prompt_ids"].get<std::vector<int32_t>>(),
                  .max_new_tokens = reference.rows,
                  .stop_at_eos = false};
  for (int stages : {1, 2, 3, 5}) {
    SCOPED_TRACE(fmt::format("{} stages", stages));
    Engine engine =
        Engine::open(*path_, EngineOptions{.n_stages = stages, .capacity = {.max_context = 512}});
    const GenerateResult result = engine.generate({request}, {.return_logits = true});
    const RequestResult& out = result.requests[0];
    ASSERT_EQ(out.logits_rows, reference.rows);
    EXPECT_EQ(out.tokens, std::vector<int32_t>(greedy.begin(), greedy.begin() + reference.rows));
    for (int64_t row = 0; row < reference.rows; ++row) {
      const std::span<const float> got(out.logits.data() + row * 49152, 49152);
      const std::span<const float> want(reference.data.data() + row * 49152, 49152);
      EXPECT_LE(test::max_relative_error(got, want), 1e-4) << "row " << row;
    }
  }
}

TEST_F(SmolLm2, TheEquivalentSafetensorsDirectoryGivesIdenticalLogits) {
  test::TempDir dir;
  const Checkpoint checkpoint = Checkpoint::open(*path_);
  write_safetensors_model(checkpoint.config, *checkpoint.tensors, DType::kF32, dir.path());
  const nlohmann::json fixture = read_fixture("smollm2_q4_1.json");
  Request request{.prompt = fixture["prompt_ids"].get<std::vector<int32_t>>(),
                  .max_new_tokens = 3,
                  .stop_at_eos = false};
  const EngineOptions options{.n_stages = 2, .capacity = {.max_context = 256}};
  GenerateResult a = Engine::open(*path_, options).generate({request}, {.return_logits = true});
  GenerateResult b = Engine::open(dir.path(), options).generate({request}, {.return_logits = true});
  EXPECT_EQ(a.requests[0].tokens, b.requests[0].tokens);
  EXPECT_EQ(a.requests[0].logits, b.requests[0].logits);
}

}  // namespace
}  // namespace conveyor
