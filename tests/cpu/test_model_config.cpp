// Tests of ModelConfig: config.json parsing for Llama/Mistral/Qwen2, every refusal and type
// check, validate(), parameter counts and the to_json -> from_json round trip.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"

namespace {

using conveyor::Architecture;
using conveyor::ErrorCode;
using conveyor::ModelConfig;
using conveyor::RopeScalingType;
using json = nlohmann::json;
using ::testing::HasSubstr;

// A small but complete Llama config.json.
json llama_json() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 128,
    "intermediate_size": 352,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16"
  })");
}

ModelConfig parse(const json& j) {
  return ModelConfig::from_json(j.dump(), "test/config.json");
}

// Expects from_json to throw kModelFormat with every one of `parts` in the message.
void expect_refused(const json& j, std::initializer_list<std::string> parts) {
  try {
    parse(j);
    ADD_FAILURE() << "expected an error for " << j.dump();
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat) << e.what();
    for (const std::string& part : parts)
      EXPECT_THAT(e.what(), HasSubstr(part));
  }
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  if (a.rope_scaling.type != RopeScalingType::kNone) {
    EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  }
  if (a.rope_scaling.type == RopeScalingType::kLlama3) {
    EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
    EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
    EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
              b.rope_scaling.original_max_position_embeddings);
  }
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
}

TEST(ModelConfig, ParsesLlamaWithDefaults) {
  const ModelConfig c = parse(llama_json());
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.intermediate_size, 352);
  EXPECT_EQ(c.n_layers, 3);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 32);  // hidden / heads
  EXPECT_EQ(c.q_dim(), 128);
  EXPECT_EQ(c.kv_dim(), 64);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.torch_dtype, conveyor::DType::kBF16);
}

TEST(ModelConfig, DefaultsForOptionalFields) {
  json j = llama_json();
  for (const char* key : {"num_key_value_heads", "rope_theta", "bos_token_id", "eos_token_id",
                          "torch_dtype", "hidden_act"}) {
    j.erase(key);
  }
  j["head_dim"] = nullptr;
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.torch_dtype, conveyor::DType::kF32);
}

TEST(ModelConfig, ExplicitHeadDimDiffersFromHiddenOverHeads) {
  json j = llama_json();
  j["head_dim"] = 64;
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_dim(), 256);
  EXPECT_EQ(c.kv_dim(), 128);
}

TEST(ModelConfig, ModelTypeWhenArchitecturesAbsent) {
  for (auto [type, arch] :
       {std::pair{"llama", Architecture::kLlama}, std::pair{"mistral", Architecture::kMistral},
        std::pair{"qwen2", Architecture::kQwen2}}) {
    json j = llama_json();
    j.erase("architectures");
    j["model_type"] = type;
    EXPECT_EQ(parse(j).architecture, arch) << type;
  }
}

TEST(ModelConfig, UnknownArchitectureListsSupported) {
  json j = llama_json();
  j["architectures"] = {"GPT2LMHeadModel"};
  expect_refused(j, {"test/config.json", "GPT2LMHeadModel", "LlamaForCausalLM",
                     "MistralForCausalLM", "Qwen2ForCausalLM"});
  j.erase("architectures");
  j["model_type"] = "gpt2";
  expect_refused(j, {"model_type", "gpt2", "LlamaForCausalLM"});
  j.erase("model_type");
  expect_refused(j, {"neither", "architectures", "model_type"});
  j["architectures"] = json::array();
  expect_refused(j, {"architectures", "non-empty"});
  j["architectures"] = "LlamaForCausalLM";
  expect_refused(j, {"architectures", "list"});
  j["architectures"] = {7};
  expect_refused(j, {"architectures", "number"});
}

TEST(ModelConfig, Qwen2AlwaysHasAttentionBiasAndOptionalWindow) {
  json j = llama_json();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["model_type"] = "qwen2";
  j["attention_bias"] = false;  // Qwen2 ignores it: q/k/v always carry a bias
  j["sliding_window"] = 4096;
  j["use_sliding_window"] = false;
  ModelConfig c = parse(j);
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.sliding_window.has_value());
  j["use_sliding_window"] = true;
  c = parse(j);
  EXPECT_EQ(c.sliding_window, 4096);
}

TEST(ModelConfig, MistralSlidingWindow) {
  json j = llama_json();
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = 4096;
  EXPECT_EQ(parse(j).sliding_window, 4096);
  j["sliding_window"] = nullptr;
  EXPECT_FALSE(parse(j).sliding_window.has_value());
  j["sliding_window"] = 0;
  expect_refused(j, {"sliding_window = 0", "positive"});
}

TEST(ModelConfig, LlamaIgnoresSlidingWindowField) {
  json j = llama_json();
  j["sliding_window"] = 128;
  EXPECT_FALSE(parse(j).sliding_window.has_value());
}

TEST(ModelConfig, RopeScalingLinearAndLlama3) {
  json j = llama_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);

  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  c = parse(j);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);

  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(parse(j).rope_scaling.type, RopeScalingType::kNone);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(parse(j).rope_scaling.type, RopeScalingType::kNone);
}

TEST(ModelConfig, RopeScalingRefusals) {
  json j = llama_json();
  for (const char* type : {"yarn", "dynamic", "longrope"}) {
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 4.0}};
    expect_refused(j, {type, "not implemented", "linear, llama3"});
  }
  j["rope_scaling"] = {{"factor", 4.0}};
  expect_refused(j, {"rope_scaling", "rope_type"});
  j["rope_scaling"] = "linear";
  expect_refused(j, {"rope_scaling", "object"});
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_refused(j, {"rope_scaling.low_freq_factor", "missing"});
  j["rope_scaling"] = {{"rope_type", "linear"}};
  expect_refused(j, {"rope_scaling.factor", "missing"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", "2"}};
  expect_refused(j, {"rope_scaling.factor", "string"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", -1.0}};
  expect_refused(j, {"factor = -1", "positive"});
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 4.0},
                       {"high_freq_factor", 1.0},
                       {"original_max_position_embeddings", 8192}};
  expect_refused(j, {"low_freq_factor", "high_freq_factor"});
}

TEST(ModelConfig, RefusesMathWeDoNotImplement) {
  json j = llama_json();
  j["hidden_act"] = "gelu";
  expect_refused(j, {"hidden_act", "gelu", "silu"});
  j = llama_json();
  j["hidden_activation"] = "gelu_pytorch_tanh";
  expect_refused(j, {"hidden_activation", "gelu_pytorch_tanh"});
  j = llama_json();
  j["mlp_bias"] = true;
  expect_refused(j, {"mlp_bias"});
  j["mlp_bias"] = false;
  EXPECT_NO_THROW(parse(j));
  j["partial_rotary_factor"] = 0.5;
  expect_refused(j, {"partial_rotary_factor = 0.5"});
  j["partial_rotary_factor"] = 1.0;
  EXPECT_NO_THROW(parse(j));
  j["attention_bias"] = true;
  expect_refused(j, {"attention_bias", "o_proj", "LlamaForCausalLM"});
  j["architectures"] = {"MistralForCausalLM"};
  expect_refused(j, {"attention_bias", "o_proj", "MistralForCausalLM"});
}

TEST(ModelConfig, RefusesInconsistentShapes) {
  json j = llama_json();
  j["num_key_value_heads"] = 3;
  expect_refused(j, {"num_attention_heads = 4", "num_key_value_heads = 3"});
  j = llama_json();
  j["head_dim"] = 33;
  expect_refused(j, {"head_dim = 33", "even"});
  j = llama_json();
  j["hidden_size"] = 130;  // not a multiple of 4 heads and no head_dim
  expect_refused(j, {"hidden_size = 130", "head_dim"});
  for (const char* key :
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "max_position_embeddings"}) {
    j = llama_json();
    j["head_dim"] = 32;
    j[key] = 0;
    expect_refused(j, {key, "positive"});
    j[key] = -5;
    expect_refused(j, {key, "-5"});
  }
  j = llama_json();
  j["vocab_size"] = int64_t{1} << 40;
  expect_refused(j, {"vocab_size", "limit"});
  j = llama_json();
  j["rms_norm_eps"] = 0.0;
  expect_refused(j, {"rms_norm_eps"});
  j = llama_json();
  j["eos_token_id"] = 5000;
  expect_refused(j, {"eos_token_id = 5000", "vocabulary"});
}

TEST(ModelConfig, MissingAndIllTypedFields) {
  json j = llama_json();
  j.erase("hidden_size");
  expect_refused(j, {"missing", "hidden_size"});
  j = llama_json();
  j["hidden_size"] = "128";
  expect_refused(j, {"hidden_size", "integer", "string"});
  j = llama_json();
  j["num_hidden_layers"] = 2.5;
  expect_refused(j, {"num_hidden_layers", "integer", "2.5"});
  j = llama_json();
  j["num_hidden_layers"] = 3.0;  // integral floats are accepted
  EXPECT_EQ(parse(j).n_layers, 3);
  j = llama_json();
  j["tie_word_embeddings"] = "true";
  expect_refused(j, {"tie_word_embeddings", "boolean", "string"});
  j = llama_json();
  j["rms_norm_eps"] = "1e-5";
  expect_refused(j, {"rms_norm_eps", "number", "string"});
  j = llama_json();
  j["hidden_act"] = 3;
  expect_refused(j, {"hidden_act", "string", "number"});
  j = llama_json();
  j["eos_token_id"] = "2";
  expect_refused(j, {"eos_token_id", "string"});
  j = llama_json();
  j["torch_dtype"] = "int8";
  expect_refused(j, {"torch_dtype", "int8", "bfloat16"});
  j = llama_json();
  j["vocab_size"] = uint64_t{1} << 63;
  expect_refused(j, {"vocab_size", "64-bit"});
}

TEST(ModelConfig, EosTokenIdForms) {
  json j = llama_json();
  j["eos_token_id"] = {2, 7, 9};
  EXPECT_EQ(parse(j).eos_token_ids, (std::vector<int64_t>{2, 7, 9}));
  j["eos_token_id"] = nullptr;
  EXPECT_TRUE(parse(j).eos_token_ids.empty());
  j["eos_token_id"] = 7;
  EXPECT_EQ(parse(j).eos_token_ids, std::vector<int64_t>{7});
}

TEST(ModelConfig, MalformedJsonNamesFileAndPosition) {
  try {
    ModelConfig::from_json("{\"vocab_size\": 12,\n oops}", "dir/config.json");
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat);
    EXPECT_THAT(e.what(), HasSubstr("dir/config.json"));
    EXPECT_THAT(e.what(), HasSubstr("byte 21"));
  }
  expect_refused(json::array({1, 2}), {"object", "array"});
  try {
    ModelConfig::from_json("{\"rope_theta\": 1e999}", "big/config.json");
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat);
    EXPECT_THAT(e.what(), HasSubstr("big/config.json"));
    EXPECT_THAT(e.what(), HasSubstr("malformed JSON"));
  }
}

TEST(ModelConfig, RoundTripThroughToJson) {
  std::vector<ModelConfig> configs;
  configs.push_back(parse(llama_json()));

  json j = llama_json();
  j["tie_word_embeddings"] = true;
  j["head_dim"] = 64;
  j["eos_token_id"] = {2, 3};
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  configs.push_back(parse(j));

  j = llama_json();
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = 256;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}};
  j["torch_dtype"] = "float16";
  j.erase("bos_token_id");
  configs.push_back(parse(j));

  j = llama_json();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = true;
  j["sliding_window"] = 512;
  j["rms_norm_eps"] = 1e-6;
  j["rope_theta"] = 1000000.0;
  configs.push_back(parse(j));
  j["use_sliding_window"] = false;
  configs.push_back(parse(j));

  for (const ModelConfig& original : configs) {
    const std::string text = original.to_json();
    SCOPED_TRACE(text);
    const ModelConfig back = ModelConfig::from_json(text, "round-trip");
    expect_same(original, back);
    EXPECT_EQ(back.to_json(), text);  // a fixed point
  }
}

TEST(ModelConfig, LoadReadsDirectoryOrFile) {
  conveyor::test::TempDir dir("conveyor-config");
  {
    std::ofstream out(dir.path() / "config.json");
    out << llama_json().dump(2);
  }
  EXPECT_EQ(ModelConfig::load(dir.path()).n_layers, 3);
  EXPECT_EQ(ModelConfig::load(dir.path() / "config.json").n_layers, 3);
  try {
    ModelConfig::load(dir.path() / "missing");
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kModelFormat);
    EXPECT_THAT(e.what(), HasSubstr((dir.path() / "missing").string()));
    EXPECT_THAT(e.what(), HasSubstr("conveyor-make-model"));
  }
  {
    std::ofstream out(dir.path() / "config.json");
    out << "{\"vocab_size\": ";
  }
  try {
    ModelConfig::load(dir.path());
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir.path() / "config.json").string()));
    EXPECT_THAT(e.what(), HasSubstr("malformed JSON"));
  }
}

TEST(ModelConfig, ValidateRejectsBadProgrammaticConfigs) {
  ModelConfig c = parse(llama_json());
  EXPECT_NO_THROW(c.validate());
  ModelConfig bad = c;
  bad.n_kv_heads = 3;
  EXPECT_THROW(bad.validate(), conveyor::Error);
  bad = c;
  bad.attention_bias = true;  // Llama with bias would need an o_proj bias
  EXPECT_THROW(bad.validate(), conveyor::Error);
  bad = c;
  bad.architecture = Architecture::kQwen2;  // Qwen2 without bias is not Qwen2
  EXPECT_THROW(bad.validate(), conveyor::Error);
  bad.attention_bias = true;
  EXPECT_NO_THROW(bad.validate());
  bad = c;
  bad.sliding_window = 64;  // Llama has no window
  EXPECT_THROW(bad.validate(), conveyor::Error);
  try {
    bad = c;
    bad.head_dim = 0;
    bad.validate();
    FAIL() << "expected an error";
  } catch (const conveyor::Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_THAT(e.what(), HasSubstr("head_dim = 0"));
  }
}

TEST(ModelConfig, ParameterCounts) {
  ModelConfig c = parse(llama_json());
  // norms 2*128, q 128*128, k/v 2*128*64, o 128*128, mlp 3*128*352
  const int64_t layer = 256 + 16384 + 16384 + 16384 + 135168;
  EXPECT_EQ(c.layer_params(), layer);
  EXPECT_EQ(c.n_params(), 1000 * 128 * 2 + 3 * layer + 128);
  c.tie_word_embeddings = true;
  EXPECT_EQ(c.n_params(), 1000 * 128 + 3 * layer + 128);
  c.architecture = Architecture::kQwen2;
  c.attention_bias = true;
  EXPECT_EQ(c.layer_params(), layer + 128 + 2 * 64);
}

TEST(ModelConfig, ArchitectureNames) {
  EXPECT_EQ(conveyor::architecture_name(Architecture::kLlama), "LlamaForCausalLM");
  EXPECT_EQ(conveyor::architecture_name(Architecture::kMistral), "MistralForCausalLM");
  EXPECT_EQ(conveyor::architecture_name(Architecture::kQwen2), "Qwen2ForCausalLM");
}

}  // namespace
