// conveyor-make-model: writes a deterministic random Llama-family checkpoint (config.json +
// safetensors) from a preset or from the shape of any config.json, for tests and benchmarks.
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include "cli_errors.hpp"

#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"
#include "conveyor/safetensors.hpp"
#include "model/gguf_writer.hpp"
#include "model/make_model.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "Write a deterministic random Llama-family model (config.json + safetensors).\n"
      "Example: conveyor-make-model --preset tiny --out /tmp/tiny --dtype bf16"};
  std::string preset = "tiny";
  std::string out_dir;
  std::string config_file;
  std::string dtype_text = "f32";
  uint64_t seed = 0;
  std::optional<int64_t> layers;
  std::optional<int64_t> vocab;
  bool tie_embeddings = false;
  std::string rope_scaling;
  std::string arch;
  int64_t shard_mb = 0;
  std::string gguf_path;

  app.add_option("--preset", preset, "Model shape: tiny (~0.9M params) or small (~125M)")
      ->check(CLI::IsMember({"tiny", "small"}));
  app.add_option("--out", out_dir, "Output directory (created when missing)")->required();
  app.add_option("--config", config_file,
                 "Take the shape from this config.json (or model directory) instead of a preset");
  app.add_option("--dtype", dtype_text, "On-disk dtype: f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_option("--seed", seed, "Random seed; the same seed writes identical bytes");
  app.add_option("--layers", layers, "Override the number of decoder layers");
  app.add_option("--vocab", vocab, "Override the vocabulary size");
  app.add_flag("--tie-embeddings", tie_embeddings, "Share lm_head with the token embedding");
  app.add_option("--rope-scaling", rope_scaling, "RoPE scaling: none, llama3 or linear:FACTOR");
  app.add_option("--arch", arch, "Architecture: llama, mistral or qwen2 (qwen2 has q/k/v bias)");
  app.add_option("--shard-mb", shard_mb,
                 "Split the weights into shards of at most N MiB (0: one model.safetensors)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--gguf", gguf_path,
                 "Also write the model as an F32 GGUF file with a placeholder vocabulary, which "
                 "llama.cpp loads (to benchmark both on the same weights)");
  CLI11_PARSE(app, argc, argv);

  return conveyor::run_reporting_errors([&] {
    conveyor::MakeModelOptions options;
    options.config = config_file.empty() ? conveyor::preset_config(preset)
                                         : conveyor::ModelConfig::load(config_file);
    conveyor::ConfigOverrides overrides;
    if (!arch.empty()) overrides.architecture = conveyor::parse_architecture_flag(arch);
    overrides.n_layers = layers;
    overrides.vocab_size = vocab;
    if (tie_embeddings) overrides.tie_word_embeddings = true;
    if (!rope_scaling.empty())
      overrides.rope_scaling = conveyor::parse_rope_scaling_flag(rope_scaling);
    conveyor::apply_overrides(options.config, overrides);
    conveyor::parse_dtype(dtype_text, options.dtype);
    options.seed = seed;
    options.out_dir = out_dir;
    options.shard_max_bytes = shard_mb * 1024 * 1024;

    // Refuse a vocabulary the GGUF's tokenizer cannot hold before anything is written.
    const auto tokenizer = gguf_path.empty()
                               ? std::function<void(conveyor::GgufWriter&)>()
                               : conveyor::placeholder_tokenizer(options.config.vocab_size);
    const conveyor::MakeModelResult result = conveyor::make_model(options);
    const conveyor::ModelConfig& c = options.config;
    fmt::print("wrote {} model to {}\n", conveyor::architecture_name(c.architecture), out_dir);
    fmt::print(
        "  shape: vocab {}, hidden {}, intermediate {}, {} layers, {} heads ({} kv), "
        "head_dim {}{}\n",
        c.vocab_size, c.hidden_size, c.intermediate_size, c.n_layers, c.n_heads, c.n_kv_heads,
        c.head_dim, c.tie_word_embeddings ? ", tied embeddings" : "");
    fmt::print("  params: {} ({:.2f} M), {} data bytes ({:.2f} MiB) as {}, seed {}\n",
               result.n_params, static_cast<double>(result.n_params) / 1e6, result.data_bytes,
               static_cast<double>(result.data_bytes) / (1024.0 * 1024.0),
               conveyor::dtype_name(options.dtype), seed);
    for (const auto& file : result.files)
      fmt::print("  {}\n", file.string());
    if (!gguf_path.empty()) {
      const conveyor::SafeTensors tensors = conveyor::SafeTensors::open(out_dir);
      const uint64_t bytes = conveyor::write_gguf_model(
          c, tensors,
          conveyor::GgufModelOptions{.add_tokenizer = tokenizer,
                                     .name = "conveyor-make-model " + preset},
          gguf_path);
      fmt::print("  {} ({:.2f} MiB, F32 GGUF, placeholder vocabulary)\n", gguf_path,
                 static_cast<double>(bytes) / (1024.0 * 1024.0));
    }
    return 0;
  });
}
