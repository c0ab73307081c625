// ModelConfig: reading, validating and writing Hugging Face config.json for Llama, Mistral and
// Qwen2. Every field that would change the math in a way conveyor does not implement is refused.
#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "conveyor/checkpoint.hpp"
#include "conveyor/gguf.hpp"
#include "conveyor/model_config.hpp"
#include "core/check.hpp"
#include "core/json_util.hpp"

namespace conveyor {
namespace {

using nlohmann::json;

constexpr std::string_view kSupportedArchitectures =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM (or model_type llama, mistral, qwen2)";

// Reads fields of one JSON object, naming the origin and the field in every error.
class FieldReader {
 public:
  FieldReader(const json& object, std::string_view origin, std::string_view prefix = "")
      : object_(object), origin_(origin), prefix_(prefix) {}

  // Absent and null both mean "not given".
  bool has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }

  int64_t get_int(const char* key) const {
    if (!has(key)) {
      fail(ErrorCode::kModelFormat, "{}: missing required field \"{}{}\"; a {} config.json has it",
           origin_, prefix_, key, "Llama-family");
    }
    return to_int(key, object_.at(key));
  }
  int64_t get_int(const char* key, int64_t fallback) const {
    return has(key) ? to_int(key, object_.at(key)) : fallback;
  }
  std::optional<int64_t> get_optional_int(const char* key) const {
    if (!has(key)) return std::nullopt;
    return to_int(key, object_.at(key));
  }

  double get_double(const char* key) const {
    if (!has(key)) {
      fail(ErrorCode::kModelFormat, "{}: missing required field \"{}{}\"", origin_, prefix_, key);
    }
    return to_double(key, object_.at(key));
  }
  double get_double(const char* key, double fallback) const {
    return has(key) ? to_double(key, object_.at(key)) : fallback;
  }

  bool get_bool(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& value = object_.at(key);
    if (!value.is_boolean()) type_error(key, "a boolean", value);
    return value.get<bool>();
  }

  std::optional<std::string> get_optional_string(const char* key) const {
    if (!has(key)) return std::nullopt;
    const json& value = object_.at(key);
    if (!value.is_string()) type_error(key, "a string", value);
    return value.get<std::string>();
  }

  int64_t to_int(const char* key, const json& value) const {
    if (value.is_number_unsigned()) {
      uint64_t v = value.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(ErrorCode::kModelFormat, "{}: field \"{}{}\" = {} does not fit in a 64-bit integer",
             origin_, prefix_, key, v);
      }
      return static_cast<int64_t>(v);
    }
    if (value.is_number_integer()) return value.get<int64_t>();
    if (value.is_number_float()) {
      // Some exporters write 4096.0; accept integral floats, refuse fractional ones.
      double d = value.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        return static_cast<int64_t>(d);
      }
      fail(ErrorCode::kModelFormat, "{}: field \"{}{}\" must be an integer but is {}", origin_,
           prefix_, key, value.dump());
    }
    type_error(key, "an integer", value);
  }

  double to_double(const char* key, const json& value) const {
    if (!value.is_number()) type_error(key, "a number", value);
    return value.get<double>();
  }

  [[noreturn]] void type_error(const char* key, const char* expected, const json& value) const {
    fail(ErrorCode::kModelFormat, "{}: field \"{}{}\" must be {} but is {} ({})", origin_, prefix_,
         key, expected, json_type_phrase(value), value.dump());
  }

 private:
  const json& object_;
  std::string_view origin_;
  std::string_view prefix_;
};

Architecture parse_architecture(const json& root, std::string_view origin) {
  auto arch_it = root.find("architectures");
  if (arch_it != root.end() && !arch_it->is_null()) {
    if (!arch_it->is_array() || arch_it->empty()) {
      fail(ErrorCode::kModelFormat,
           "{}: field \"architectures\" must be a non-empty list of strings but is {}; "
           "supported: {}",
           origin, arch_it->dump(), kSupportedArchitectures);
    }
    const json& first = arch_it->front();
    if (!first.is_string()) {
      fail(ErrorCode::kModelFormat,
           "{}: field \"architectures\" must hold strings but its first entry is {} ({})", origin,
           json_type_phrase(first), first.dump());
    }
    const std::string name = first.get<std::string>();
    if (name == "LlamaForCausalLM") return Architecture::kLlama;
    if (name == "MistralForCausalLM") return Architecture::kMistral;
    if (name == "Qwen2ForCausalLM") return Architecture::kQwen2;
    fail(ErrorCode::kModelFormat, "{}: architecture \"{}\" is not supported; supported: {}", origin,
         name, kSupportedArchitectures);
  }
  auto type_it = root.find("model_type");
  if (type_it == root.end() || type_it->is_null()) {
    fail(ErrorCode::kModelFormat,
         "{}: neither \"architectures\" nor \"model_type\" is given, so the architecture is "
         "unknown; supported: {}",
         origin, kSupportedArchitectures);
  }
  if (!type_it->is_string()) {
    fail(ErrorCode::kModelFormat, "{}: field \"model_type\" must be a string but is {} ({})",
         origin, json_type_phrase(*type_it), type_it->dump());
  }
  const std::string type = type_it->get<std::string>();
  if (type == "llama") return Architecture::kLlama;
  if (type == "mistral") return Architecture::kMistral;
  if (type == "qwen2") return Architecture::kQwen2;
  fail(ErrorCode::kModelFormat, "{}: model_type \"{}\" is not supported; supported: {}", origin,
       type, kSupportedArchitectures);
}

RopeScaling parse_rope_scaling(const json& root, std::string_view origin) {
  auto it = root.find("rope_scaling");
  RopeScaling scaling;
  if (it == root.end() || it->is_null()) return scaling;
  if (!it->is_object()) {
    fail(ErrorCode::kModelFormat, "{}: field \"rope_scaling\" must be an object or null but is {}",
         origin, json_type_phrase(*it));
  }
  FieldReader reader(*it, origin, "rope_scaling.");
  std::optional<std::string> type = reader.get_optional_string("rope_type");
  if (!type) type = reader.get_optional_string("type");
  if (!type) {
    fail(ErrorCode::kModelFormat,
         "{}: \"rope_scaling\" has neither \"rope_type\" nor \"type\"; conveyor supports "
         "linear, llama3 and default",
         origin);
  }
  if (*type == "default") return scaling;
  if (*type == "linear") {
    scaling.type = RopeScalingType::kLinear;
    scaling.factor = reader.get_double("factor");
    return scaling;
  }
  if (*type == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
    scaling.factor = reader.get_double("factor");
    scaling.low_freq_factor = reader.get_double("low_freq_factor");
    scaling.high_freq_factor = reader.get_double("high_freq_factor");
    scaling.original_max_position_embeddings = reader.get_int("original_max_position_embeddings");
    return scaling;
  }
  fail(ErrorCode::kModelFormat,
       "{}: rope_scaling type \"{}\" is not implemented (it changes the rotary embedding math); "
       "conveyor supports linear, llama3 and default",
       origin, *type);
}

std::vector<int64_t> parse_eos(const json& root, std::string_view origin) {
  auto it = root.find("eos_token_id");
  if (it == root.end() || it->is_null()) return {};
  FieldReader reader(root, origin);
  if (it->is_array()) {
    std::vector<int64_t> ids;
    for (const json& id : *it)
      ids.push_back(reader.to_int("eos_token_id", id));
    return ids;
  }
  return {reader.to_int("eos_token_id", *it)};
}

// Refuses every field that changes the math in a way conveyor does not implement.
void refuse_unimplemented(const json& root, Architecture arch, std::string_view origin) {
  FieldReader reader(root, origin);
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (auto act = reader.get_optional_string(key); act && *act != "silu") {
      fail(ErrorCode::kModelFormat,
           "{}: {} = \"{}\" is not implemented; conveyor implements the SwiGLU MLP with \"silu\"",
           origin, key, *act);
    }
  }
  if (reader.get_bool("mlp_bias", false)) {
    fail(ErrorCode::kModelFormat,
         "{}: mlp_bias = true is not implemented; conveyor's MLP projections have no bias", origin);
  }
  if (reader.has("partial_rotary_factor")) {
    double factor = reader.get_double("partial_rotary_factor");
    if (factor != 1.0) {
      fail(ErrorCode::kModelFormat,
           "{}: partial_rotary_factor = {} is not implemented; conveyor rotates the whole head "
           "(factor 1)",
           origin, factor);
    }
  }
  if (arch != Architecture::kQwen2 && reader.get_bool("attention_bias", false)) {
    fail(ErrorCode::kModelFormat,
         "{}: attention_bias = true for {} is not implemented: it adds a bias to o_proj as well "
         "as q/k/v, and conveyor has no o_proj bias",
         origin, architecture_name(arch));
  }
}

}  // namespace

std::string_view architecture_name(Architecture arch) noexcept {
  switch (arch) {
    case Architecture::kLlama:
      return "LlamaForCausalLM";
    case Architecture::kMistral:
      return "MistralForCausalLM";
    case Architecture::kQwen2:
      return "Qwen2ForCausalLM";
  }
  return "?";
}

ModelConfig ModelConfig::from_json(std::string_view json_text, std::string_view origin) {
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::parse_error& e) {
    fail(ErrorCode::kModelFormat, "{}: malformed JSON at byte {}: {}", origin, e.byte, e.what());
  } catch (const json::exception& e) {  // e.g. a number too large for a double
    fail(ErrorCode::kModelFormat, "{}: malformed JSON: {}", origin, e.what());
  }
  if (!root.is_object()) {
    fail(ErrorCode::kModelFormat, "{}: config.json must hold a JSON object but holds {}", origin,
         json_type_phrase(root));
  }

  ModelConfig config;
  config.architecture = parse_architecture(root, origin);
  refuse_unimplemented(root, config.architecture, origin);

  FieldReader reader(root, origin);
  config.vocab_size = reader.get_int("vocab_size");
  config.hidden_size = reader.get_int("hidden_size");
  config.intermediate_size = reader.get_int("intermediate_size");
  config.n_layers = reader.get_int("num_hidden_layers");
  config.n_heads = reader.get_int("num_attention_heads");
  config.n_kv_heads = reader.get_int("num_key_value_heads", config.n_heads);
  if (reader.has("head_dim")) {
    config.head_dim = reader.get_int("head_dim");
  } else {
    if (config.n_heads <= 0) {
      fail(ErrorCode::kModelFormat, "{}: num_attention_heads = {} must be positive", origin,
           config.n_heads);
    }
    if (config.hidden_size % config.n_heads != 0) {
      fail(ErrorCode::kModelFormat,
           "{}: head_dim is not given and hidden_size = {} is not a multiple of "
           "num_attention_heads = {}; add \"head_dim\" to config.json",
           origin, config.hidden_size, config.n_heads);
    }
    config.head_dim = config.hidden_size / config.n_heads;
  }
  config.max_position_embeddings =
      reader.get_int("max_position_embeddings", config.max_position_embeddings);
  config.rms_norm_eps = reader.get_double("rms_norm_eps", config.rms_norm_eps);
  config.rope_theta = reader.get_double("rope_theta", config.rope_theta);
  config.rope_scaling = parse_rope_scaling(root, origin);
  config.tie_word_embeddings = reader.get_bool("tie_word_embeddings", false);
  // Qwen2's q/k/v projections always carry a bias, whatever attention_bias says.
  config.attention_bias = config.architecture == Architecture::kQwen2;

  switch (config.architecture) {
    case Architecture::kLlama:
      break;  // no sliding window
    case Architecture::kMistral:
      config.sliding_window = reader.get_optional_int("sliding_window");
      break;
    case Architecture::kQwen2:
      if (reader.get_bool("use_sliding_window", false)) {
        config.sliding_window = reader.get_optional_int("sliding_window");
      }
      break;
  }

  config.bos_token_id = reader.get_optional_int("bos_token_id");
  config.eos_token_ids = parse_eos(root, origin);

  std::optional<std::string> dtype = reader.get_optional_string("torch_dtype");
  if (!dtype) dtype = reader.get_optional_string("dtype");  // newer transformers spelling
  if (dtype && !parse_dtype(*dtype, config.torch_dtype)) {
    fail(ErrorCode::kModelFormat,
         "{}: torch_dtype = \"{}\" is not supported; conveyor reads float32, bfloat16 and float16 "
         "checkpoints",
         origin, *dtype);
  }

  try {
    config.validate();
  } catch (const Error& e) {
    fail(ErrorCode::kModelFormat, "{}: {}", origin, e.what());
  }
  return config;
}

ModelConfig ModelConfig::load(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec) || path.extension() == ".gguf") {
    const ModelLocation location = locate_model(path);
    if (location.format == CheckpointFormat::kGguf) {
      return from_gguf(GgufFile::open(location.path));
    }
    file = location.path / "config.json";
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    fail(ErrorCode::kModelFormat,
         "cannot open {}: no such readable file; check --model points at a model directory with a "
         "config.json, or create one with conveyor-make-model",
         file.string());
  }
  std::ostringstream text;
  text << in.rdbuf();
  return from_json(text.str(), file.string());
}

std::string ModelConfig::to_json() const {
  json root;
  root["architectures"] = json::array({std::string(architecture_name(architecture))});
  switch (architecture) {
    case Architecture::kLlama:
      root["model_type"] = "llama";
      break;
    case Architecture::kMistral:
      root["model_type"] = "mistral";
      break;
    case Architecture::kQwen2:
      root["model_type"] = "qwen2";
      break;
  }
  root["vocab_size"] = vocab_size;
  root["hidden_size"] = hidden_size;
  root["intermediate_size"] = intermediate_size;
  root["num_hidden_layers"] = n_layers;
  root["num_attention_heads"] = n_heads;
  root["num_key_value_heads"] = n_kv_heads;
  root["head_dim"] = head_dim;
  root["max_position_embeddings"] = max_position_embeddings;
  root["rms_norm_eps"] = rms_norm_eps;
  root["rope_theta"] = rope_theta;
  switch (rope_scaling.type) {
    case RopeScalingType::kNone:
      root["rope_scaling"] = nullptr;
      break;
    case RopeScalingType::kLinear:
      root["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
      break;
    case RopeScalingType::kLlama3:
      root["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", rope_scaling.factor},
          {"low_freq_factor", rope_scaling.low_freq_factor},
          {"high_freq_factor", rope_scaling.high_freq_factor},
          {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
      break;
    case RopeScalingType::kFrequencyFactors:
      fail(ErrorCode::kInvalidArgument,
           "this model's rotary embedding uses per-frequency factors (a GGUF rope_freqs tensor), "
           "which config.json cannot express; keep the model as GGUF");
  }
  root["tie_word_embeddings"] = tie_word_embeddings;
  root["attention_bias"] = attention_bias;
  root["mlp_bias"] = false;
  root["hidden_act"] = "silu";
  if (architecture == Architecture::kMistral) {
    root["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  } else if (architecture == Architecture::kQwen2) {
    root["use_sliding_window"] = sliding_window.has_value();
    root["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  }
  root["bos_token_id"] = bos_token_id ? json(*bos_token_id) : json(nullptr);
  if (eos_token_ids.empty()) {
    root["eos_token_id"] = nullptr;
  } else if (eos_token_ids.size() == 1) {
    root["eos_token_id"] = eos_token_ids.front();
  } else {
    root["eos_token_id"] = eos_token_ids;
  }
  switch (torch_dtype) {
    case DType::kF32:
      root["torch_dtype"] = "float32";
      break;
    case DType::kF16:
      root["torch_dtype"] = "float16";
      break;
    case DType::kBF16:
      root["torch_dtype"] = "bfloat16";
      break;
  }
  return root.dump(2) + "\n";
}

void ModelConfig::validate() const {
  // Limits far above any real model that keep n_params() and byte counts inside int64.
  constexpr int64_t kMaxDim = int64_t{1} << 20;
  constexpr int64_t kMaxLayers = 4096;
  constexpr int64_t kMaxPositions = int64_t{1} << 31;
  const std::tuple<const char*, int64_t, int64_t> sizes[] = {
      {"vocab_size", vocab_size, kMaxDim},
      {"hidden_size", hidden_size, kMaxDim},
      {"intermediate_size", intermediate_size, kMaxDim},
      {"num_hidden_layers", n_layers, kMaxLayers},
      {"num_attention_heads", n_heads, kMaxDim},
      {"num_key_value_heads", n_kv_heads, kMaxDim},
      {"head_dim", head_dim, kMaxDim},
      {"max_position_embeddings", max_position_embeddings, kMaxPositions},
  };
  for (const auto& [name, value, limit] : sizes) {
    if (value <= 0) {
      fail(ErrorCode::kInvalidArgument, "{} = {} must be positive", name, value);
    }
    if (value > limit) {
      fail(ErrorCode::kInvalidArgument, "{} = {} exceeds conveyor's limit {}", name, value, limit);
    }
  }
  if (n_heads * head_dim > kMaxDim) {
    fail(ErrorCode::kInvalidArgument,
         "num_attention_heads * head_dim = {} * {} exceeds conveyor's limit {}", n_heads, head_dim,
         kMaxDim);
  }
  if (n_heads % n_kv_heads != 0) {
    fail(ErrorCode::kInvalidArgument,
         "num_attention_heads = {} is not a multiple of num_key_value_heads = {}; grouped-query "
         "attention needs whole groups",
         n_heads, n_kv_heads);
  }
  if (head_dim % 2 != 0) {
    fail(ErrorCode::kInvalidArgument,
         "head_dim = {} is odd; rotary embeddings rotate pairs, so head_dim must be even",
         head_dim);
  }
  if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps)) {
    fail(ErrorCode::kInvalidArgument, "rms_norm_eps = {} must be a positive finite number",
         rms_norm_eps);
  }
  if (!(rope_theta > 0.0) || !std::isfinite(rope_theta)) {
    fail(ErrorCode::kInvalidArgument, "rope_theta = {} must be a positive finite number",
         rope_theta);
  }
  if (rope_scaling.type == RopeScalingType::kFrequencyFactors) {
    if (static_cast<int64_t>(rope_scaling.frequency_factors.size()) != head_dim / 2) {
      fail(ErrorCode::kInvalidArgument,
           "rope frequency factors hold {} values but head_dim {} rotates {} pairs",
           rope_scaling.frequency_factors.size(), head_dim, head_dim / 2);
    }
    for (double f : rope_scaling.frequency_factors) {
      if (!(f > 0.0) || !std::isfinite(f)) {
        fail(ErrorCode::kInvalidArgument,
             "rope frequency factor {} must be a positive finite number", f);
      }
    }
  } else if (rope_scaling.type != RopeScalingType::kNone &&
             (!(rope_scaling.factor > 0.0) || !std::isfinite(rope_scaling.factor))) {
    fail(ErrorCode::kInvalidArgument, "rope_scaling.factor = {} must be a positive finite number",
         rope_scaling.factor);
  }
  if (rope_scaling.type == RopeScalingType::kLlama3) {
    if (!(rope_scaling.low_freq_factor > 0.0) ||
        !(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor)) {
      fail(ErrorCode::kInvalidArgument,
           "rope_scaling low_freq_factor = {} and high_freq_factor = {} must satisfy "
           "0 < low_freq_factor < high_freq_factor",
           rope_scaling.low_freq_factor, rope_scaling.high_freq_factor);
    }
    if (rope_scaling.original_max_position_embeddings <= 0) {
      fail(ErrorCode::kInvalidArgument,
           "rope_scaling.original_max_position_embeddings = {} must be positive",
           rope_scaling.original_max_position_embeddings);
    }
  }
  if (sliding_window && *sliding_window <= 0) {
    fail(ErrorCode::kInvalidArgument, "sliding_window = {} must be positive (or null for none)",
         *sliding_window);
  }
  if (sliding_window && architecture == Architecture::kLlama) {
    fail(ErrorCode::kInvalidArgument,
         "sliding_window is set for LlamaForCausalLM, which has none; use Mistral or Qwen2");
  }
  if (architecture == Architecture::kQwen2 && !attention_bias) {
    fail(ErrorCode::kInvalidArgument,
         "Qwen2ForCausalLM always has q/k/v biases; set attention_bias = true");
  }
  if (architecture != Architecture::kQwen2 && attention_bias) {
    fail(ErrorCode::kInvalidArgument,
         "attention_bias = true for {} is not implemented: it adds a bias to o_proj as well as "
         "q/k/v, and conveyor has no o_proj bias",
         architecture_name(architecture));
  }
  for (int64_t id : eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      fail(ErrorCode::kInvalidArgument, "eos_token_id = {} is outside the vocabulary [0, {})", id,
           vocab_size);
    }
  }
  if (bos_token_id && (*bos_token_id < 0 || *bos_token_id >= vocab_size)) {
    fail(ErrorCode::kInvalidArgument, "bos_token_id = {} is outside the vocabulary [0, {})",
         *bos_token_id, vocab_size);
  }
}

int64_t ModelConfig::layer_params() const {
  const int64_t norms = 2 * hidden_size;
  const int64_t attention =
      hidden_size * q_dim() + 2 * hidden_size * kv_dim() + q_dim() * hidden_size;
  const int64_t bias = attention_bias ? q_dim() + 2 * kv_dim() : 0;
  const int64_t mlp = 3 * hidden_size * intermediate_size;
  return norms + attention + bias + mlp;
}

int64_t ModelConfig::n_params() const {
  const int64_t embedding = vocab_size * hidden_size;
  const int64_t head = tie_word_embeddings ? 0 : vocab_size * hidden_size;
  return embedding + n_layers * layer_params() + hidden_size + head;
}

}  // namespace conveyor
