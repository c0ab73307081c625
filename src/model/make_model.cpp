// Presets, overrides and deterministic random checkpoints for conveyor-make-model.
#include "model/make_model.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>

#include "core/check.hpp"
#include "core/random_bits.hpp"
#include "model/safetensors_writer.hpp"

namespace conveyor {
namespace {

// ---- deterministic random numbers ------------------------------------------------------------

// The splitmix64 sequence: returns the next output and advances `state`.
uint64_t splitmix64_next(uint64_t& state) noexcept {
  const uint64_t out = splitmix64(state);
  state += 0x9e3779b97f4a7c15ull;
  return out;
}

// xoshiro256**: small, fast and fully specified, so streams are identical everywhere.
class Xoshiro256 {
 public:
  explicit Xoshiro256(uint64_t seed) noexcept {
    for (uint64_t& word : s_)
      word = splitmix64_next(seed);
  }
  uint64_t next() noexcept {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, 1), exactly a multiple of 2^-53.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

 private:
  static uint64_t rotl(uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// Natural log from correctly rounded operations only (std::log may differ by an ulp between C
// libraries). Every multiply-add is an explicit std::fma, so no compiler can contract it
// differently (-ffp-contract) and the bits are the same everywhere.
// ln(x) = e ln 2 + 2 atanh((m - 1) / (m + 1)) with m in [sqrt(1/2), sqrt(2)).
double portable_log(double x) noexcept {
  int exponent = 0;
  double m = std::frexp(x, &exponent);  // exact
  if (m < 0.70710678118654752) {
    m = m * 2.0;  // exact
    exponent -= 1;
  }
  const double num = m - 1.0;
  const double den = m + 1.0;
  const double t = num / den;  // |t| < 0.172
  const double t2 = t * t;
  // atanh(t) / t = sum t^(2k) / (2k + 1); 14 terms reach double precision for |t| < 0.172.
  double sum = 1.0 / 29.0;
  for (int k = 13; k >= 0; --k)
    sum = std::fma(sum, t2, 1.0 / static_cast<double>(2 * k + 1));
  const double series = sum * t;
  const double twice = 2.0 * series;
  return std::fma(static_cast<double>(exponent), 0.69314718055994531, twice);
}

// Standard normal pairs by the Marsaglia polar form of Box-Muller; only correctly rounded
// operations (+, -, *, /, sqrt, fma), so the bits do not depend on the platform's libm.
class NormalSampler {
 public:
  explicit NormalSampler(uint64_t seed) : rng_(seed) {}
  double next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    for (;;) {
      const double u = std::fma(2.0, rng_.uniform(), -1.0);
      const double v = std::fma(2.0, rng_.uniform(), -1.0);
      const double s = std::fma(u, u, v * v);
      if (s >= 1.0 || s == 0.0) continue;
      const double log_s = portable_log(s);
      const double ratio = (-2.0 * log_s) / s;
      const double scale = std::sqrt(ratio);
      spare_ = v * scale;
      has_spare_ = true;
      return u * scale;
    }
  }

 private:
  Xoshiro256 rng_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

// ---- files -----------------------------------------------------------------------------------

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) {
    fail(ErrorCode::kInvalidArgument, "cannot write {}; check the directory is writable",
         path.string());
  }
}

bool is_model_file(const std::string& name) {
  if (name == "config.json" || name == "model.safetensors" ||
      name == "model.safetensors.index.json") {
    return true;
  }
  // model-00001-of-00004.safetensors, and .tmp leftovers of an interrupted run
  return name.starts_with("model-") &&
         (name.ends_with(".safetensors") || name.ends_with(".safetensors.tmp")) &&
         name.find("-of-") != std::string::npos;
}

}  // namespace

uint64_t fnv1a_64(std::string_view text) noexcept {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : text) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

ModelConfig preset_config(std::string_view name) {
  ModelConfig config;
  config.architecture = Architecture::kLlama;
  config.rms_norm_eps = 1e-5;
  config.rope_theta = 10000.0;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  if (name == "tiny") {
    config.vocab_size = 512;
    config.hidden_size = 128;
    config.intermediate_size = 352;
    config.n_layers = 4;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.head_dim = 32;
    config.max_position_embeddings = 1024;
  } else if (name == "small") {
    config.vocab_size = 32000;
    config.hidden_size = 768;
    config.intermediate_size = 2048;
    config.n_layers = 12;
    config.n_heads = 12;
    config.n_kv_heads = 4;
    config.head_dim = 64;
    config.max_position_embeddings = 2048;
  } else {
    fail(ErrorCode::kInvalidArgument, "unknown preset \"{}\"; presets are tiny and small", name);
  }
  return config;
}

void apply_overrides(ModelConfig& config, const ConfigOverrides& overrides) {
  if (overrides.architecture) {
    config.architecture = *overrides.architecture;
    config.attention_bias = config.architecture == Architecture::kQwen2;
    if (config.architecture == Architecture::kLlama) config.sliding_window.reset();
  }
  if (overrides.n_layers) config.n_layers = *overrides.n_layers;
  if (overrides.vocab_size) {
    config.vocab_size = *overrides.vocab_size;
    // Keep special tokens inside a shrunken vocabulary.
    if (config.bos_token_id && *config.bos_token_id >= config.vocab_size)
      config.bos_token_id.reset();
    std::erase_if(config.eos_token_ids, [&](int64_t id) { return id >= config.vocab_size; });
  }
  if (overrides.tie_word_embeddings) config.tie_word_embeddings = *overrides.tie_word_embeddings;
  if (overrides.rope_scaling) config.rope_scaling = *overrides.rope_scaling;
}

Architecture parse_architecture_flag(std::string_view text) {
  if (text == "llama") return Architecture::kLlama;
  if (text == "mistral") return Architecture::kMistral;
  if (text == "qwen2") return Architecture::kQwen2;
  fail(ErrorCode::kInvalidArgument, "unknown architecture \"{}\"; use llama, mistral or qwen2",
       text);
}

RopeScaling parse_rope_scaling_flag(std::string_view text) {
  RopeScaling scaling;
  if (text == "none") return scaling;
  if (text == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
    scaling.factor = 8.0;
    scaling.low_freq_factor = 1.0;
    scaling.high_freq_factor = 4.0;
    scaling.original_max_position_embeddings = 8192;
    return scaling;
  }
  if (text.starts_with("linear:")) {
    std::string_view number = text.substr(7);
    double factor = 0.0;
    auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), factor);
    if (ec == std::errc() && end == number.data() + number.size() && factor > 0.0 &&
        std::isfinite(factor)) {
      scaling.type = RopeScalingType::kLinear;
      scaling.factor = factor;
      return scaling;
    }
  }
  fail(ErrorCode::kInvalidArgument,
       "rope scaling \"{}\" is not understood; use none, llama3 or linear:FACTOR (e.g. "
       "linear:2.0)",
       text);
}

void MakeModelOptions::validate() const {
  config.validate();
  if (out_dir.empty()) {
    fail(ErrorCode::kInvalidArgument, "MakeModelOptions::out_dir is empty; name a directory");
  }
  if (shard_max_bytes < 0) {
    fail(ErrorCode::kInvalidArgument,
         "MakeModelOptions::shard_max_bytes = {} is negative; use 0 for one file or a positive "
         "byte limit",
         shard_max_bytes);
  }
}

std::vector<TensorRecipe> model_tensor_recipes(const ModelConfig& config) {
  const int64_t hidden = config.hidden_size;
  const int64_t inter = config.intermediate_size;
  const int64_t q_dim = config.q_dim();
  const int64_t kv_dim = config.kv_dim();
  // Projections use std = gain / sqrt(fan_in), so outputs of unit-RMS inputs have unit variance;
  // q and k get gain 1.5 so scaled attention scores have std ~2 and attention is far from
  // uniform. The head has std 3 / sqrt(hidden) so logits spread over a few units; a tied
  // embedding uses the same scale (the first RMSNorm restores unit RMS).
  const auto proj_std = [](double gain, int64_t fan_in) {
    return gain / std::sqrt(static_cast<double>(fan_in));
  };
  const double head_std = proj_std(3.0, hidden);
  std::vector<TensorRecipe> recipes;
  recipes.push_back({"model.embed_tokens.weight",
                     {config.vocab_size, hidden},
                     0.0,
                     config.tie_word_embeddings ? head_std : 1.0});
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    recipes.push_back({p + "input_layernorm.weight", {hidden}, 1.0, 0.1});
    recipes.push_back({p + "self_attn.q_proj.weight", {q_dim, hidden}, 0.0, proj_std(1.5, hidden)});
    recipes.push_back(
        {p + "self_attn.k_proj.weight", {kv_dim, hidden}, 0.0, proj_std(1.5, hidden)});
    recipes.push_back(
        {p + "self_attn.v_proj.weight", {kv_dim, hidden}, 0.0, proj_std(1.0, hidden)});
    if (config.attention_bias) {
      recipes.push_back({p + "self_attn.q_proj.bias", {q_dim}, 0.0, 0.1});
      recipes.push_back({p + "self_attn.k_proj.bias", {kv_dim}, 0.0, 0.1});
      recipes.push_back({p + "self_attn.v_proj.bias", {kv_dim}, 0.0, 0.1});
    }
    recipes.push_back({p + "self_attn.o_proj.weight", {hidden, q_dim}, 0.0, proj_std(1.0, q_dim)});
    recipes.push_back({p + "post_attention_layernorm.weight", {hidden}, 1.0, 0.1});
    recipes.push_back({p + "mlp.gate_proj.weight", {inter, hidden}, 0.0, proj_std(1.0, hidden)});
    recipes.push_back({p + "mlp.up_proj.weight", {inter, hidden}, 0.0, proj_std(1.0, hidden)});
    recipes.push_back({p + "mlp.down_proj.weight", {hidden, inter}, 0.0, proj_std(1.0, inter)});
  }
  recipes.push_back({"model.norm.weight", {hidden}, 1.0, 0.1});
  if (!config.tie_word_embeddings) {
    recipes.push_back({"lm_head.weight", {config.vocab_size, hidden}, 0.0, head_std});
  }
  return recipes;
}

std::vector<float> generate_tensor(const TensorRecipe& recipe, uint64_t seed) {
  int64_t numel = 1;
  for (int64_t dim : recipe.shape)
    numel *= dim;
  uint64_t mix = seed;
  NormalSampler normal(splitmix64_next(mix) ^ fnv1a_64(recipe.name));
  std::vector<float> values(static_cast<std::size_t>(numel));
  for (float& value : values) {
    value = static_cast<float>(std::fma(recipe.std, normal.next(), recipe.mean));
  }
  return values;
}

MakeModelResult make_model(const MakeModelOptions& options) {
  options.validate();
  ModelConfig config = options.config;
  config.torch_dtype = options.dtype;
  const std::filesystem::path& dir = options.out_dir;

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    fail(ErrorCode::kInvalidArgument, "cannot create output directory {}: {}", dir.string(),
         ec ? ec.message() : "a file of that name exists");
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file() && is_model_file(entry.path().filename().string())) {
      std::filesystem::remove(entry.path());
    }
  }

  MakeModelResult result;
  result.n_params = config.n_params();
  const std::filesystem::path config_path = dir / "config.json";
  write_text(config_path, config.to_json());
  result.files.push_back(config_path);

  // Group tensors in model order, so a stage's layers sit in few shards.
  const std::vector<TensorRecipe> recipes = model_tensor_recipes(config);
  std::vector<std::vector<const TensorRecipe*>> shards(1);
  uint64_t shard_bytes = 0;
  for (const TensorRecipe& recipe : recipes) {
    uint64_t bytes = dtype_size(options.dtype);
    for (int64_t dim : recipe.shape)
      bytes *= static_cast<uint64_t>(dim);
    if (options.shard_max_bytes > 0 && !shards.back().empty() &&
        shard_bytes + bytes > static_cast<uint64_t>(options.shard_max_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&recipe);
    shard_bytes += bytes;
    result.data_bytes += bytes;
  }

  const bool sharded = options.shard_max_bytes > 0;
  nlohmann::json weight_map = nlohmann::json::object();
  std::vector<std::filesystem::path> weight_files;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const std::string file_name =
        sharded ? fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size())
                : std::string("model.safetensors");
    SafeTensorsWriter writer;
    for (const TensorRecipe* recipe : shards[i]) {
      writer.add(recipe->name, options.dtype, recipe->shape,
                 [recipe, seed = options.seed] { return generate_tensor(*recipe, seed); });
      weight_map[recipe->name] = file_name;
    }
    writer.write(dir / file_name);
    weight_files.push_back(dir / file_name);
  }
  if (sharded) {
    const nlohmann::json index = {{"metadata", {{"total_size", result.data_bytes}}},
                                  {"weight_map", weight_map}};
    const std::filesystem::path index_path = dir / "model.safetensors.index.json";
    write_text(index_path, index.dump(2) + "\n");
    result.files.push_back(index_path);
  }
  result.files.insert(result.files.end(), weight_files.begin(), weight_files.end());
  return result;
}

}  // namespace conveyor
