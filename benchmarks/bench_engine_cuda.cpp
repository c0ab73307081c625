// CUDA engine benchmark: the Llama-3-8B shape with random weights drawn on one GPU, bf16,
// batch 1 — decode step time at two contexts against the device copy bandwidth, prefill FLOP/s
// against a cuBLASLt GEMM, S stages on one GPU against one stage, CUDA graphs on against off. The
// baselines are measured in the same run. Prints markdown tables and writes JSON.
// Usage: bench_engine_cuda [--config configs/llama-3-8b.json] [--json out.json] (--help: all flags)
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "backend/cuda/device_context.hpp"
#include "bench_common.hpp"
#include "bench_cuda_baselines.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

using namespace conveyor;
using nlohmann::json;
using namespace conveyor::bench;  // baselines and statistics (bench_cuda_baselines.hpp)

namespace {

constexpr double kDecodeGoal = 0.80;            // decode bytes/s over copy bandwidth
constexpr double kPrefillGoal = 0.60;           // prefill FLOP/s over the large GEMM
constexpr double kPipelineOverheadGoal = 0.03;  // S-stage decode step over one stage, minus 1

struct Flags {
  std::string config = std::string(CONVEYOR_SOURCE_DIR) + "/configs/llama-3-8b.json";
  std::string json_path = "bench_engine_cuda.json";
  int device = 0;
  uint64_t seed = 1;
  std::vector<int64_t> contexts = {512, 4096};
  int64_t decode_steps = 64;  // max_new_tokens of a decode request (its first token is prefill's)
  int warmup_steps = 2;       // decode steps dropped at the start of every measured request
  int repeats = 3;            // measured generate() calls per decode figure, after one warm-up
  int64_t prefill_tokens = 2048;
  int prefill_repeats = 5;
  int stages = 4;
  int64_t copy_mib = 2048;
  int64_t gemm_size = 8192;
  bool quick = false;
};

const char* goal_mark(bool met) {
  return met ? "met" : "NOT met";
}

// ---- the model's figures -------------------------------------------------------------------

// Weights of one decoder layer's projections (q, k, v, o, gate, up, down), no norms or biases.
int64_t projection_params(const ModelConfig& c) {
  return 2 * c.hidden_size * c.q_dim() + 2 * c.hidden_size * c.kv_dim() +
         3 * c.hidden_size * c.intermediate_size;
}

// Bytes a decode step must read besides the KV cache: every layer (projections, norms, biases),
// the final norm and the lm_head; of the embedding only one row (with tied embeddings the table
// is the lm_head, read whole, and counted once).
double decode_weight_bytes(const ModelConfig& c, size_t dtype_bytes) {
  const int64_t params = c.n_layers * c.layer_params() + c.hidden_size +
                         c.vocab_size * c.hidden_size + (c.tie_word_embeddings ? 0 : c.hidden_size);
  return static_cast<double>(params) * static_cast<double>(dtype_bytes);
}

// KV bytes a decode step reads per cached token: keys and values of every layer.
double kv_bytes_per_token(const ModelConfig& c, size_t dtype_bytes) {
  return static_cast<double>(c.n_layers * 2 * c.kv_dim()) * static_cast<double>(dtype_bytes);
}

// FLOPs of a prefill of `t` tokens: the projections (2 per weight per token), causal attention
// (QK^T and PV, 2 FLOPs per multiply-add, t(t+1)/2 query-key pairs per head) and the lm_head on
// the one row sampled after the prompt (the engine samples even with max_new_tokens = 0).
double prefill_flops(const ModelConfig& c, int64_t t) {
  const double tokens = static_cast<double>(t);
  const double projections = 2.0 * tokens * static_cast<double>(c.n_layers * projection_params(c));
  const double attention = static_cast<double>(c.n_layers) * 2.0 * 2.0 *
                           static_cast<double>(c.q_dim()) * tokens * (tokens + 1.0) / 2.0;
  const double head = 2.0 * static_cast<double>(c.hidden_size * c.vocab_size);
  return projections + attention + head;
}

// A deterministic pseudo-random prompt of `n` ids in [0, vocab).
std::vector<int32_t> make_prompt(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> prompt;
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 12345;
  for (int64_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    prompt.push_back(static_cast<int32_t>((state >> 33) % static_cast<uint64_t>(vocab)));
  }
  return prompt;
}

struct Setup {
  Flags flags;
  std::filesystem::path model;  // config.json given to Engine::open
  ModelConfig config;
  int64_t max_context = 0;
  double weight_bytes = 0.0;    // per decode step
  double kv_token_bytes = 0.0;  // per cached token per decode step
  double copy_bandwidth = 0.0;  // the decode reference
  double gemm_flops = 0.0;      // the prefill reference
};

struct EngineRun {
  std::string label;
  int n_stages = 1;
  bool cuda_graphs = true;
};

Engine open_engine(const Setup& setup, const EngineRun& run, json& engines) {
  EngineOptions options;
  options.device.backend = BackendKind::kCuda;
  options.device.cuda_devices.assign(static_cast<size_t>(run.n_stages), setup.flags.device);
  options.device.dtype = DType::kBF16;
  options.n_stages = run.n_stages;
  options.capacity.max_batch = 1;
  options.capacity.max_context = setup.max_context;
  // A CUDA stage holds micro-batches of at most 4096 tokens: longer prompts go in chunks (prompts
  // up to 4096 tokens stay whole, so the default figures are single-chunk prefills).
  options.schedule.chunking = Chunking::fixed(4096);
  options.random_weights_seed = setup.flags.seed;
  options.device.cuda_graphs = run.cuda_graphs;
  const double start = bench::now_seconds();
  Engine engine = Engine::open(setup.model, options);
  const double open_seconds = bench::now_seconds() - start;
  size_t free_bytes = 0, total_bytes = 0;
  CONVEYOR_CUDA_CHECK(cudaSetDevice(setup.flags.device));
  CONVEYOR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const double used_gib = static_cast<double>(total_bytes - free_bytes) / (1 << 30);
  fmt::print("\nengine \"{}\": S = {}, partition {}, cuda_graphs {}, max_context {}\n", run.label,
             run.n_stages, engine.partition().to_string(), run.cuda_graphs ? "on" : "off",
             engine.max_context());
  fmt::print(
      "  opened in {:.2f} s (load_seconds {:.2f}); device memory in use {:.2f} of {:.2f} GiB\n",
      open_seconds, engine.load_seconds(), used_gib, static_cast<double>(total_bytes) / (1 << 30));
  for (const std::string& line : engine.stage_reports())
    fmt::print("  {}\n", line);
  engines.push_back({{"label", run.label},
                     {"n_stages", run.n_stages},
                     {"cuda_graphs", run.cuda_graphs},
                     {"partition", engine.partition().to_string()},
                     {"open_seconds", open_seconds},
                     {"load_seconds", engine.load_seconds()},
                     {"device_memory_used_gib", used_gib},
                     {"stage_reports", engine.stage_reports()}});
  return engine;
}

struct DecodeFigure {
  std::string engine;
  int n_stages = 1;
  bool cuda_graphs = true;
  int64_t context = 0;
  size_t n_steps = 0;           // measured steps, all repeats together
  double median_seconds = 0.0;  // per step
  double p90_seconds = 0.0;
  double mean_kv_tokens = 0.0;  // keys each measured step attends, on average
  double bytes_per_step = 0.0;
  double bandwidth() const { return bytes_per_step / median_seconds; }
};

// Decode at batch 1 after a prompt of `context` tokens: one warm-up request (captures the CUDA
// graphs of every context bucket the request crosses), then flags.repeats measured requests;
// the first flags.warmup_steps decode steps of each are dropped.
DecodeFigure measure_decode(Engine& engine, const Setup& setup, const EngineRun& run,
                            int64_t context) {
  const Flags& flags = setup.flags;
  Request request;
  request.prompt = make_prompt(context, setup.config.vocab_size, static_cast<uint64_t>(context));
  request.max_new_tokens = flags.decode_steps;
  request.stop_at_eos = false;
  engine.generate({request});
  std::vector<double> seconds;
  double kv_tokens = 0.0;
  for (int rep = 0; rep < flags.repeats; ++rep) {
    const GenerateResult result = engine.generate({request});
    if (static_cast<int64_t>(result.requests[0].tokens.size()) != flags.decode_steps) {
      fail(ErrorCode::kInternal, "asked for {} new tokens but the engine generated {}",
           flags.decode_steps, result.requests[0].tokens.size());
    }
    int64_t k = 0;  // decode step k feeds the token at position context + k
    for (const StepStats& step : result.steps) {
      if (step.phase != Phase::kDecode) continue;
      if (k >= flags.warmup_steps) {
        seconds.push_back(step.seconds);
        kv_tokens += static_cast<double>(context + k + 1);
      }
      ++k;
    }
  }
  DecodeFigure d{.engine = run.label,
                 .n_stages = run.n_stages,
                 .cuda_graphs = run.cuda_graphs,
                 .context = context,
                 .n_steps = seconds.size(),
                 .median_seconds = median(seconds),
                 .p90_seconds = percentile(seconds, 0.9)};
  d.mean_kv_tokens = kv_tokens / static_cast<double>(std::max<size_t>(seconds.size(), 1));
  d.bytes_per_step = setup.weight_bytes + d.mean_kv_tokens * setup.kv_token_bytes;
  fmt::print("  decode at context {}: median {:.3f} ms, p90 {:.3f} ms over {} steps\n", context,
             1e3 * d.median_seconds, 1e3 * d.p90_seconds, d.n_steps);
  return d;
}

struct PrefillFigure {
  int64_t tokens = 0;
  int n_runs = 0;
  double median_seconds = 0.0;
  double flops = 0.0;
};

// One prompt of flags.prefill_tokens, max_new_tokens = 0 (prefill only): one warm-up, then
// flags.prefill_repeats measured requests, each a fresh request on the same engine.
PrefillFigure measure_prefill(Engine& engine, const Setup& setup) {
  Request request;
  request.prompt = make_prompt(setup.flags.prefill_tokens, setup.config.vocab_size, 7);
  request.max_new_tokens = 0;
  request.stop_at_eos = false;
  engine.generate({request});
  std::vector<double> seconds;
  for (int rep = 0; rep < setup.flags.prefill_repeats; ++rep) {
    const GenerateResult result = engine.generate({request});
    if (result.prefill_tokens != setup.flags.prefill_tokens) {
      fail(ErrorCode::kInternal, "prefill of {} prompt tokens reported {} tokens",
           setup.flags.prefill_tokens, result.prefill_tokens);
    }
    seconds.push_back(result.prefill_seconds);
  }
  PrefillFigure p{.tokens = setup.flags.prefill_tokens,
                  .n_runs = setup.flags.prefill_repeats,
                  .median_seconds = median(seconds),
                  .flops = prefill_flops(setup.config, setup.flags.prefill_tokens)};
  fmt::print("  prefill of {} tokens: median {:.2f} ms over {} runs\n", p.tokens,
             1e3 * p.median_seconds, p.n_runs);
  return p;
}

json decode_json(const DecodeFigure& d, const Setup& setup) {
  return {{"engine", d.engine},
          {"n_stages", d.n_stages},
          {"cuda_graphs", d.cuda_graphs},
          {"context", d.context},
          {"measured_steps", d.n_steps},
          {"step_ms_median", 1e3 * d.median_seconds},
          {"step_ms_p90", 1e3 * d.p90_seconds},
          {"tokens_per_s", 1.0 / d.median_seconds},
          {"mean_kv_tokens", d.mean_kv_tokens},
          {"bytes_per_step", d.bytes_per_step},
          {"gb_per_s", d.bandwidth() / 1e9},
          {"fraction_of_copy", d.bandwidth() / setup.copy_bandwidth}};
}

// The config to open: the file itself, or with --quick a 4-layer copy written next to the JSON.
std::filesystem::path model_path(const Flags& flags, ModelConfig& config) {
  config = ModelConfig::load(flags.config);
  if (!flags.quick) return flags.config;
  config.n_layers = std::max(flags.stages, 1);
  std::filesystem::path path = std::filesystem::path(flags.json_path);
  path.replace_extension(".quick-config.json");
  std::ofstream(path) << config.to_json();
  fmt::print("--quick: {} layers, config written to {}\n", config.n_layers, path.string());
  return path;
}

int run(const Flags& flags, const std::string& command) {
  CONVEYOR_CUDA_CHECK(cudaSetDevice(flags.device));
  const json device = device_info(flags.device);
  fmt::print("device {}: {} (compute capability {}), {} SMs, {:.1f} GiB\n", flags.device,
             device["name"].get<std::string>(), device["compute_capability"].get<std::string>(),
             device["sm_count"].get<int>(), device["memory_total_bytes"].get<double>() / (1 << 30));
  fmt::print(
      "driver {} (CUDA driver API {}), CUDA runtime {}; peak memory bandwidth from clocks "
      "{:.0f} GB/s\n",
      device["driver"].get<std::string>(), device["cuda_driver_api"].get<std::string>(),
      device["cuda_runtime"].get<std::string>(),
      device["peak_bandwidth_gb_per_s_from_clocks"].get<double>());

  Setup setup{.flags = flags};
  setup.model = model_path(flags, setup.config);
  const ModelConfig& c = setup.config;
  const int64_t longest = std::max(*std::max_element(flags.contexts.begin(), flags.contexts.end()),
                                   flags.prefill_tokens);
  setup.max_context = longest + flags.decode_steps + 1;
  if (setup.max_context > c.max_position_embeddings) {
    fail(ErrorCode::kInvalidArgument,
         "context {} + {} decode steps exceeds max_position_embeddings {} of {}; lower --contexts "
         "or --decode-steps",
         longest, flags.decode_steps, c.max_position_embeddings, flags.config);
  }
  const size_t dtype_bytes = dtype_size(DType::kBF16);
  setup.weight_bytes = decode_weight_bytes(c, dtype_bytes);
  setup.kv_token_bytes = kv_bytes_per_token(c, dtype_bytes);
  fmt::print(
      "model {}: {} layers, hidden {}, intermediate {}, {} heads, {} kv heads, head_dim {}, "
      "vocab {}, {:.2f} B params; bf16, random weights (seed {})\n",
      setup.model.string(), c.n_layers, c.hidden_size, c.intermediate_size, c.n_heads, c.n_kv_heads,
      c.head_dim, c.vocab_size, static_cast<double>(c.n_params()) / 1e9, flags.seed);
  fmt::print("decode reads {:.3f} GB of weights per step + {:.1f} KiB of KV per cached token\n",
             setup.weight_bytes / 1e9, setup.kv_token_bytes / 1024);

  // Baselines first, their buffers freed before the 16 GB engines are opened.
  const Baselines baselines = measure_baselines(flags.device, c,
                                                {.copy_mib = flags.copy_mib,
                                                 .gemm_size = flags.gemm_size,
                                                 .prefill_tokens = flags.prefill_tokens});
  setup.copy_bandwidth = baselines.copy_bandwidth;
  setup.gemm_flops = baselines.gemms[0].flops_per_s();
  fmt::print("\n## Baselines (same run)\n\n");
  fmt::print(
      "device copy: cudaMemcpyAsync device to device of {} MiB, median of 10, counted as "
      "STREAM does (bytes read + bytes written): {:.1f} GB/s\n\n",
      flags.copy_mib, baselines.copy_bandwidth / 1e9);
  fmt::print(
      "| bf16 GEMM (conveyor::cuda::Gemm, cuBLASLt, fp32 accumulate) | n x in -> out | ms "
      "| TFLOP/s | weight GB/s |\n|---|---|---|---|---|\n");
  json gemms = json::array();
  for (const GemmFigure& g : baselines.gemms) {
    fmt::print("| {} | {} x {} -> {} | {:.3f} | {:.1f} | {:.1f} |\n", g.label, g.n, g.in, g.out,
               1e3 * g.seconds, g.flops_per_s() / 1e12, g.weight_bytes_per_s() / 1e9);
    gemms.push_back({{"label", g.label},
                     {"n", g.n},
                     {"in", g.in},
                     {"out", g.out},
                     {"ms_median", 1e3 * g.seconds},
                     {"tflops", g.flops_per_s() / 1e12},
                     {"weight_gb_per_s", g.weight_bytes_per_s() / 1e9}});
  }

  json engines = json::array();
  std::vector<DecodeFigure> decodes;
  PrefillFigure prefill;
  const int64_t pipeline_context = flags.contexts.front();
  const EngineRun one{"S=1", 1, true};
  const EngineRun many{fmt::format("S={}", flags.stages), flags.stages, true};
  const EngineRun eager{"S=1, no graphs", 1, false};
  {
    Engine engine = open_engine(setup, one, engines);
    for (int64_t context : flags.contexts)
      decodes.push_back(measure_decode(engine, setup, one, context));
    prefill = measure_prefill(engine, setup);
  }
  if (flags.stages > 1) {
    Engine engine = open_engine(setup, many, engines);
    decodes.push_back(measure_decode(engine, setup, many, pipeline_context));
  }
  {
    Engine engine = open_engine(setup, eager, engines);
    decodes.push_back(measure_decode(engine, setup, eager, pipeline_context));
  }

  fmt::print("\n## Decode, batch 1 (goal: >= {:.0f} % of copy bandwidth)\n\n", 100 * kDecodeGoal);
  fmt::print(
      "| engine | context | steps | median ms | p90 ms | tok/s | GB read / step | GB/s | of "
      "copy |\n|---|---|---|---|---|---|---|---|---|\n");
  json decode_rows = json::array();
  for (const DecodeFigure& d : decodes) {
    fmt::print("| {} | {} | {} | {:.3f} | {:.3f} | {:.1f} | {:.3f} | {:.1f} | {:.1f} % |\n",
               d.engine, d.context, d.n_steps, 1e3 * d.median_seconds, 1e3 * d.p90_seconds,
               1.0 / d.median_seconds, d.bytes_per_step / 1e9, d.bandwidth() / 1e9,
               100 * d.bandwidth() / setup.copy_bandwidth);
    decode_rows.push_back(decode_json(d, setup));
  }
  json goals = json::array();
  for (const DecodeFigure& d : decodes) {
    if (d.n_stages != 1 || !d.cuda_graphs) continue;
    const double fraction = d.bandwidth() / setup.copy_bandwidth;
    fmt::print("decode at context {}: {:.1f} % of copy bandwidth, goal {:.0f} %: {}\n", d.context,
               100 * fraction, 100 * kDecodeGoal, goal_mark(fraction >= kDecodeGoal));
    goals.push_back({{"figure", fmt::format("decode at context {}, fraction of copy", d.context)},
                     {"value", fraction},
                     {"goal", kDecodeGoal},
                     {"met", fraction >= kDecodeGoal}});
  }

  const double prefill_rate = prefill.flops / prefill.median_seconds;
  const double prefill_fraction = prefill_rate / setup.gemm_flops;
  fmt::print("\n## Prefill, S = 1 (goal: >= {:.0f} % of the {}^3 GEMM)\n\n", 100 * kPrefillGoal,
             flags.gemm_size);
  fmt::print(
      "| tokens | runs | median ms | tok/s | TFLOP | TFLOP/s | GEMM TFLOP/s | of GEMM "
      "|\n|---|---|---|---|---|---|---|---|\n");
  fmt::print("| {} | {} | {:.2f} | {:.0f} | {:.2f} | {:.1f} | {:.1f} | {:.1f} % |\n",
             prefill.tokens, prefill.n_runs, 1e3 * prefill.median_seconds,
             static_cast<double>(prefill.tokens) / prefill.median_seconds, prefill.flops / 1e12,
             prefill_rate / 1e12, setup.gemm_flops / 1e12, 100 * prefill_fraction);
  fmt::print("prefill: {:.1f} % of the GEMM, goal {:.0f} %: {}\n", 100 * prefill_fraction,
             100 * kPrefillGoal, goal_mark(prefill_fraction >= kPrefillGoal));
  goals.push_back({{"figure", "prefill, fraction of the large GEMM"},
                   {"value", prefill_fraction},
                   {"goal", kPrefillGoal},
                   {"met", prefill_fraction >= kPrefillGoal}});

  auto find_decode = [&](const EngineRun& run) -> const DecodeFigure& {
    for (const DecodeFigure& d : decodes) {
      if (d.engine == run.label && d.context == pipeline_context) return d;
    }
    CONVEYOR_ASSERT(false);
    return decodes.front();
  };
  const DecodeFigure& base = find_decode(one);
  json pipeline = nullptr;
  if (flags.stages > 1) {
    const DecodeFigure& staged = find_decode(many);
    const double overhead = staged.median_seconds / base.median_seconds - 1.0;
    const double per_hop = (staged.median_seconds - base.median_seconds) / (flags.stages - 1);
    fmt::print(
        "\n## S = {} stages on one GPU against S = 1, decode at context {} (goal: overhead "
        "<= {:.0f} %)\n\n",
        flags.stages, pipeline_context, 100 * kPipelineOverheadGoal);
    fmt::print("| S | median ms | vs S=1 | per hop us |\n|---|---|---|---|\n");
    fmt::print("| 1 | {:.3f} | 1.000 | — |\n", 1e3 * base.median_seconds);
    fmt::print("| {} | {:.3f} | {:.3f} | {:.1f} |\n", flags.stages, 1e3 * staged.median_seconds,
               staged.median_seconds / base.median_seconds, 1e6 * per_hop);
    fmt::print("S = {} overhead {:+.2f} %, goal <= {:.0f} %: {}\n", flags.stages, 100 * overhead,
               100 * kPipelineOverheadGoal, goal_mark(overhead <= kPipelineOverheadGoal));
    pipeline = {{"context", pipeline_context},
                {"n_stages", flags.stages},
                {"s1_step_ms", 1e3 * base.median_seconds},
                {"s_step_ms", 1e3 * staged.median_seconds},
                {"overhead", overhead},
                {"per_hop_us", 1e6 * per_hop}};
    goals.push_back({{"figure", fmt::format("decode overhead of S = {} over S = 1", flags.stages)},
                     {"value", overhead},
                     {"goal", kPipelineOverheadGoal},
                     {"met", overhead <= kPipelineOverheadGoal}});
  }

  const DecodeFigure& no_graphs = find_decode(eager);
  const double graph_speedup = no_graphs.median_seconds / base.median_seconds;
  fmt::print("\n## CUDA graphs, S = 1, decode at context {}\n\n", pipeline_context);
  fmt::print("| graphs | median ms | p90 ms |\n|---|---|---|\n");
  fmt::print("| on | {:.3f} | {:.3f} |\n| off | {:.3f} | {:.3f} |\n", 1e3 * base.median_seconds,
             1e3 * base.p90_seconds, 1e3 * no_graphs.median_seconds, 1e3 * no_graphs.p90_seconds);
  fmt::print("graphs make a decode step {:.2f}x faster\n", graph_speedup);

  // The model: its config.json as the engine read it, and how it was instantiated.
  json model = json::parse(c.to_json());
  model["conveyor"] = {{"path", setup.model.string()},
                       {"quick", flags.quick},
                       {"n_params", c.n_params()},
                       {"device_dtype", "bf16"},
                       {"random_weights_seed", flags.seed}};
  bench::write_json(flags.json_path,
                    {{"benchmark", "bench_engine_cuda"},
                     {"command", command},
                     {"device", device},
                     {"model", model},
                     {"settings",
                      {{"max_batch", 1},
                       {"max_context", setup.max_context},
                       {"decode_new_tokens", flags.decode_steps},
                       {"decode_warmup_steps_dropped", flags.warmup_steps},
                       {"decode_repeats", flags.repeats},
                       {"prefill_repeats", flags.prefill_repeats}}},
                     {"decode_weight_bytes_per_step", setup.weight_bytes},
                     {"decode_kv_bytes_per_cached_token", setup.kv_token_bytes},
                     {"baselines",
                      {{"copy_bytes", baselines.copy_bytes},
                       {"copy_ms_median", 1e3 * baselines.copy_seconds},
                       {"copy_gb_per_s_read_plus_write", baselines.copy_bandwidth / 1e9},
                       {"gemms", gemms}}},
                     {"engines", engines},
                     {"decode", decode_rows},
                     {"prefill",
                      {{"tokens", prefill.tokens},
                       {"runs", prefill.n_runs},
                       {"ms_median", 1e3 * prefill.median_seconds},
                       {"flops", prefill.flops},
                       {"tflops", prefill_rate / 1e12},
                       {"fraction_of_gemm", prefill_fraction},
                       {"lm_head_row_counted", true}}},
                     {"pipeline", pipeline},
                     {"cuda_graphs",
                      {{"context", pipeline_context},
                       {"on_step_ms", 1e3 * base.median_seconds},
                       {"off_step_ms", 1e3 * no_graphs.median_seconds},
                       {"speedup", graph_speedup}}},
                     {"goals", goals}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  CLI::App app{
      "bench_engine_cuda: Llama-3-8B-shaped decode and prefill on one GPU (random bf16 "
      "weights), against copy bandwidth and a cuBLASLt GEMM measured in the same run"};
  app.add_option("--config", flags.config, "config.json of the model shape")->capture_default_str();
  app.add_option("--json", flags.json_path, "JSON output")->capture_default_str();
  app.add_option("--device", flags.device, "CUDA device of every stage")->capture_default_str();
  app.add_option("--seed", flags.seed, "random weights seed")->capture_default_str();
  app.add_option("--contexts", flags.contexts,
                 "decode contexts (prompt tokens); the first is used for S stages and graphs off")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--decode-steps", flags.decode_steps, "new tokens per decode request")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--warmup-steps", flags.warmup_steps, "decode steps dropped per request")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--repeats", flags.repeats, "measured decode requests per figure")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--prefill-tokens", flags.prefill_tokens, "prompt tokens of the prefill figure")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--prefill-repeats", flags.prefill_repeats, "measured prefill requests")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--stages", flags.stages, "S of the S-stages-on-one-GPU comparison (1: skip)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--copy-mib", flags.copy_mib, "buffer of the copy baseline")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--gemm-size", flags.gemm_size, "m = n = k of the reference GEMM")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--quick", flags.quick,
               "smoke test: as many layers as --stages; unless given, 16 decode steps, 1 decode "
               "and 2 prefill repeats (figures not comparable with the goals)");
  CLI11_PARSE(app, argc, argv);
  if (flags.quick) {  // smaller defaults; flags given explicitly still win
    if (app.count("--decode-steps") == 0) flags.decode_steps = 16;
    if (app.count("--repeats") == 0) flags.repeats = 1;
    if (app.count("--prefill-repeats") == 0) flags.prefill_repeats = 2;
  }
  // The first new token comes from the prefill: a request makes decode_steps - 1 decode steps.
  if (flags.decode_steps - 1 <= flags.warmup_steps) {
    fmt::print(stderr,
               "--decode-steps {} makes {} decode steps, none left after --warmup-steps {}; raise "
               "--decode-steps\n",
               flags.decode_steps, flags.decode_steps - 1, flags.warmup_steps);
    return 2;
  }
  if (flags.contexts.empty() ||
      std::any_of(flags.contexts.begin(), flags.contexts.end(), [](int64_t c) { return c < 1; })) {
    fmt::print(stderr, "--contexts needs at least one context, each >= 1\n");
    return 2;
  }
  std::string command = argv[0];
  for (int i = 1; i < argc; ++i)
    command += fmt::format(" {}", argv[i]);

  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    const std::string why =
        status != cudaSuccess
            ? fmt::format("cudaGetDeviceCount failed: {} ({})", cudaGetErrorString(status),
                          cudaGetErrorName(status))
            : std::string("cudaGetDeviceCount found 0 devices (check CUDA_VISIBLE_DEVICES)");
    fmt::print(stderr,
               "bench_engine_cuda needs a CUDA GPU and none is usable here: {}; CUDA driver API "
               "{}{}, runtime {}\n",
               why, cuda_version(driver), driver == 0 ? " (no NVIDIA driver loaded)" : "",
               cuda_version(runtime));
    return 2;
  }
  if (flags.device < 0 || flags.device >= count) {
    fmt::print(stderr, "--device {} but {} CUDA device{} visible (ids 0..{})\n", flags.device,
               count, count == 1 ? " is" : "s are", count - 1);
    return 2;
  }
  try {
    return run(flags, command);
  } catch (const Error& e) {
    fmt::print(stderr, "error ({}): {}\n", to_string(e.code()), e.what());
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
  }
  return 1;
}
