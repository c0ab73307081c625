// conveyor-generate: run a model directory across S pipeline stages and print generated ids,
// timings and the stage balance; optionally write logits (.npy), a Chrome trace and a timeline.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <map>
#include "cli_errors.hpp"

#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/observe.hpp"
#include "conveyor/token_ids.hpp"
#include "observe/npy.hpp"

namespace {

struct Args {
  std::string model;
  std::vector<std::string> prompt_ids;  // repeatable: one request each
  std::string prompt_ids_file;
  std::string batch;  // "1,2,3;4,5": several prompts
  int64_t max_new_tokens = 16;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  bool ignore_eos = false;
  std::string logits_out;
  bool all_logits = false;
  std::string trace_out;
  std::string timeline_out;
  std::string layers_per_stage;
  std::string devices;
  std::string dtype = "bf16";
  bool quiet = false;
  conveyor::EngineOptions engine;
};

std::vector<std::vector<int32_t>> collect_prompts(const Args& args) {
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : args.prompt_ids) {
    prompts.push_back(conveyor::parse_token_ids(text, "--prompt-ids"));
  }
  if (!args.batch.empty()) {
    size_t begin = 0;
    for (;;) {
      const size_t end = args.batch.find(';', begin);
      prompts.push_back(conveyor::parse_token_ids(
          std::string_view(args.batch).substr(begin, end - begin), "--batch"));
      if (end == std::string::npos) break;
      begin = end + 1;
    }
  }
  if (!args.prompt_ids_file.empty()) {
    auto more = conveyor::read_token_ids_file(args.prompt_ids_file);
    prompts.insert(prompts.end(), more.begin(), more.end());
  }
  if (prompts.empty()) {
    throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                          "no prompt given: pass --prompt-ids 1,2,3, --batch '1,2;3,4' or "
                          "--prompt-ids-file FILE");
  }
  return prompts;
}

int run(Args& args) {
  if (!args.layers_per_stage.empty()) {
    for (int32_t count : conveyor::parse_token_ids(args.layers_per_stage, "--layers-per-stage")) {
      args.engine.layers_per_stage.push_back(count);
    }
  }
  for (int32_t device : conveyor::parse_token_ids(args.devices, "--devices")) {
    args.engine.devices.push_back(device);
  }
  if (!conveyor::parse_dtype(args.dtype, args.engine.device_dtype) ||
      args.engine.device_dtype == conveyor::DType::kF32) {
    throw conveyor::Error(
        conveyor::ErrorCode::kInvalidArgument,
        fmt::format("--dtype {} is not a GPU dtype; use bf16 or f16", args.dtype));
  }
  const auto prompts = collect_prompts(args);
  if (static_cast<int64_t>(prompts.size()) > args.engine.max_batch) {
    throw conveyor::Error(
        conveyor::ErrorCode::kInvalidArgument,
        fmt::format("{} prompts but --max-batch is {}; raise --max-batch or pass fewer prompts",
                    prompts.size(), args.engine.max_batch));
  }
  args.engine.record_trace = true;  // the balance report needs the events

  conveyor::Engine engine = conveyor::Engine::open(args.model, args.engine);
  const conveyor::ModelConfig& config = engine.config();
  const auto& partition = engine.partition();
  fmt::print("model {}: {}, {} layers, hidden {}, vocab {}, {:.1f}M params\n", args.model,
             conveyor::architecture_name(config.architecture), config.n_layers, config.hidden_size,
             config.vocab_size, static_cast<double>(config.n_params()) / 1e6);
  fmt::print("pipeline: {} stage(s), layers {}, max_context {}\n", partition.n_stages(),
             partition.to_string(), engine.max_context());
  for (const std::string& line : engine.stage_reports())
    fmt::print("  {}\n", line);

  std::vector<conveyor::Request> requests;
  for (const auto& prompt : prompts) {
    conveyor::Request req;
    req.prompt = prompt;
    req.max_new_tokens = args.max_new_tokens;
    req.sampling = {.temperature = args.temperature,
                    .top_k = args.top_k,
                    .top_p = args.top_p,
                    .seed = args.seed};
    req.stop_at_eos = !args.ignore_eos;
    requests.push_back(std::move(req));
  }
  conveyor::GenerateOptions gen;
  gen.return_logits = !args.logits_out.empty();
  gen.all_logits = args.all_logits;
  if (args.all_logits && args.logits_out.empty()) {
    throw conveyor::Error(conveyor::ErrorCode::kInvalidArgument,
                          "--all-logits needs --logits-out FILE.npy");
  }
  conveyor::GenerateResult result = engine.generate(requests, gen);

  for (size_t r = 0; r < result.requests.size(); ++r) {
    const auto& out = result.requests[r];
    fmt::print("request {}: {}{}\n", r, fmt::join(out.tokens, " "),
               out.finish == conveyor::FinishReason::kStopToken ? "  [stop token]" : "");
  }
  auto rate = [](int64_t tokens, double seconds) {
    return seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  };
  fmt::print(
      "load {:.3f} s | prefill {} tok in {:.3f} s = {:.1f} tok/s | decode {} tok in {:.3f} s "
      "= {:.1f} tok/s\n",
      engine.load_seconds(), result.prefill_tokens, result.prefill_seconds,
      rate(result.prefill_tokens, result.prefill_seconds), result.decode_tokens,
      result.decode_seconds, rate(result.decode_tokens, result.decode_seconds));

  const int n_stages = partition.n_stages();
  if (!args.quiet) {
    // The ideal bubble (S-1)/(M+S-1) describes one pipelined step, so report per phase.
    for (conveyor::Phase phase : {conveyor::Phase::kPrefill, conveyor::Phase::kDecode}) {
      int m = 0;
      for (const auto& step : result.steps) {
        if (step.phase == phase) m = std::max(m, step.n_micro_batches);
      }
      if (m == 0) continue;
      fmt::print("{} stage balance:\n{}", conveyor::to_string(phase),
                 conveyor::format_balance_report(
                     conveyor::balance_report_for_phase(result.trace, n_stages, m, phase)));
    }
  }
  if (!args.logits_out.empty()) {
    std::vector<float> all;
    int64_t rows = 0;
    for (const auto& out : result.requests) {
      all.insert(all.end(), out.logits.begin(), out.logits.end());
      rows += out.logits_rows;
    }
    conveyor::write_npy_f32(args.logits_out, all, rows, config.vocab_size);
    fmt::print("wrote logits [{}, {}] to {}\n", rows, config.vocab_size, args.logits_out);
  }
  if (!args.trace_out.empty()) {
    conveyor::write_chrome_trace(args.trace_out, result.trace, n_stages);
    fmt::print("wrote Chrome trace to {} (open in Perfetto)\n", args.trace_out);
  }
  if (!args.timeline_out.empty()) {
    conveyor::write_timeline_svg(args.timeline_out, result.trace, n_stages,
                                 {.title = fmt::format("{}: {} stages", args.model, n_stages)});
    fmt::print("wrote timeline to {}\n", args.timeline_out);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  CLI::App app{"conveyor-generate: pipeline-parallel generation with a Llama-family model"};
  app.add_option("--model", args.model,
                 "model directory (config.json + *.safetensors); with --random-weights also a "
                 "config.json file")
      ->required();
  app.add_option("--random-weights", args.engine.random_weights_seed,
                 "draw the weights from this seed instead of reading *.safetensors (benchmarks: "
                 "an 8B shape from configs/llama-3-8b.json needs no files; drawn on the GPU with "
                 "--backend cuda)");
  app.add_option("--prompt-ids", args.prompt_ids, "prompt token ids, e.g. 1,2,3 (repeatable)");
  app.add_option("--prompt-ids-file", args.prompt_ids_file, "file with one prompt per line");
  app.add_option("--batch", args.batch, "several prompts separated by ';', e.g. '1,2,3;4,5'");
  app.add_option("--max-new-tokens", args.max_new_tokens, "tokens to generate per prompt")
      ->capture_default_str();
  app.add_option("--temperature", args.temperature, "0 = greedy")->capture_default_str();
  app.add_option("--top-k", args.top_k, "0 = off")->capture_default_str();
  app.add_option("--top-p", args.top_p, "1 = off")->capture_default_str();
  app.add_option("--seed", args.seed, "sampling seed")->capture_default_str();
  app.add_flag("--ignore-eos", args.ignore_eos, "do not stop at the model's eos token");
  app.add_option("--backend", args.engine.backend, "cpu, cuda or auto (cuda when a GPU is present)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, conveyor::BackendKind>{{"cpu", conveyor::BackendKind::kCpu},
                                                       {"cuda", conveyor::BackendKind::kCuda},
                                                       {"auto", conveyor::BackendKind::kAuto}},
          CLI::ignore_case));
  app.add_option("--devices", args.devices, "CUDA device per stage, e.g. 0,1,2,3 or 0,0,0,0");
  app.add_option("--transport", args.engine.transport,
                 "between stages: local (in process; device copies on or between GPUs) or nccl "
                 "(NCCL send/recv, one GPU per stage)")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, conveyor::Transport>{{"local", conveyor::Transport::kLocal},
                                                     {"nccl", conveyor::Transport::kNccl}},
          CLI::ignore_case));
  app.add_option("--dtype", args.dtype, "weights/activations on a GPU: bf16 or f16")
      ->capture_default_str();
  app.add_flag("!--no-cuda-graphs", args.engine.cuda_graphs,
               "launch decode kernels one by one instead of replaying CUDA graphs");
  app.add_option("--threads", args.engine.threads_per_stage, "threads per stage (cpu)")
      ->capture_default_str();
  app.add_option("--stages", args.engine.n_stages, "pipeline stages")->capture_default_str();
  app.add_option("--partition", args.engine.partition,
                 "even, balanced (cost model), counts 5,6,6,7 or a layout emb,0-4|5-9,head")
      ->capture_default_str();
  app.add_option("--layers-per-stage", args.layers_per_stage, "explicit split, e.g. 5,6,6,7");
  app.add_option("--microbatches", args.engine.prefill_micro_batches,
                 "prefill micro-batches (0 = one per stage)")
      ->capture_default_str();
  app.add_option("--decode-microbatches", args.engine.decode_micro_batches,
                 "decode micro-batches (0 = min(stages, sequences))")
      ->capture_default_str();
  app.add_option("--chunk-tokens", args.engine.chunk_tokens,
                 "prefill chunk size; 0 = automatic (chunk only when there are fewer prompts "
                 "than micro-batches), -1 = never chunk")
      ->capture_default_str();
  app.add_option("--max-batch", args.engine.max_batch, "most prompts per run")
      ->capture_default_str();
  app.add_option("--max-context", args.engine.max_context,
                 "prompt + generated tokens (0 = min(max_position_embeddings, 4096))")
      ->capture_default_str();
  app.add_option("--logits-out", args.logits_out, "write float32 logits [rows, vocab] as .npy");
  app.add_flag("--all-logits", args.all_logits,
               "with --logits-out: one row per prompt position too, not only per generated token");
  app.add_option("--trace", args.trace_out, "write a Chrome trace JSON (Perfetto)");
  app.add_option("--timeline", args.timeline_out, "write an SVG timeline of the stages");
  app.add_flag("--quiet", args.quiet, "omit the stage-balance report");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  return conveyor::run_reporting_errors([&] { return run(args); });
}
