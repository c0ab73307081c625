// What conveyor-generate, conveyor-chat and conveyor-serve share: the engine options on the
// command line, the load progress display, and opening the model's tokenizer.
#pragma once

#include <fmt/format.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cstdio>
#include <map>
#include <optional>
#include <string>

#include "cli_errors.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/process_group.hpp"
#include "conveyor/tokenizer.hpp"
#include "core/int_list.hpp"
#include "text/unicode.hpp"

namespace conveyor::cli {

struct EngineArgs {
  std::string model;
  std::string layers_per_stage;
  std::string devices;
  std::string dtype;      // empty: the backend's default
  std::string tokenizer;  // tokenizer.json for a model directory without one
  std::string chunking = "auto";
  std::string decode_mode = "strict";
  EngineOptions engine;
};

// --model and every engine option (stages, partition, threads, backend, devices, ...).
inline void add_engine_options(CLI::App& app, EngineArgs& args) {
  app.add_option("--model", args.model,
                 "a .gguf file, a directory holding one, or a Hugging Face directory "
                 "(config.json + *.safetensors); with --random-weights also a config.json")
      ->required();
  app.add_option("--tokenizer", args.tokenizer,
                 "tokenizer.json to use when the model directory has none");
  app.add_option("--random-weights", args.engine.random_weights_seed,
                 "draw the weights from this seed instead of reading them (benchmarks)");
  app.add_option("--backend", args.engine.device.backend,
                 "cpu, cuda or auto (cuda when a GPU is present)")
      ->transform(
          CLI::CheckedTransformer(std::map<std::string, BackendKind>{{"cpu", BackendKind::kCpu},
                                                                     {"cuda", BackendKind::kCuda},
                                                                     {"auto", BackendKind::kAuto}},
                                  CLI::ignore_case));
  app.add_option("--devices", args.devices, "CUDA device per stage, e.g. 0,1,2,3 or 0,0,0,0");
  app.add_option("--transport", args.engine.device.transport,
                 "between stages: local (in process) or nccl (NCCL send/recv, one GPU per stage)")
      ->transform(
          CLI::CheckedTransformer(std::map<std::string, Transport>{{"local", Transport::kLocal},
                                                                   {"nccl", Transport::kNccl}},
                                  CLI::ignore_case));
  app.add_option("--dtype", args.dtype,
                 "weights: f32 (cpu default) or bf16 on the cpu; bf16 (default) or f16 on a GPU");
  app.add_flag("!--no-cuda-graphs", args.engine.device.cuda_graphs,
               "launch decode kernels one by one instead of replaying CUDA graphs");
  app.add_option("--threads", args.engine.device.threads_per_stage, "threads per stage (cpu)")
      ->capture_default_str();
  app.add_flag("!--no-mmap", args.engine.device.map_weights,
               "cpu: copy every weight out of the checkpoint instead of computing from the "
               "file's mapping where it already holds them as stored (F32, or BF16 with --dtype "
               "bf16)");
  app.add_flag("--batch-invariant", args.engine.device.batch_invariant,
               "cpu: each token's result independent of what shares its step (slower prefill)");
  app.add_option("--stages", args.engine.n_stages,
                 "pipeline stages (default: as --partition implies; 1 for even and balanced)");
  app.add_option("--partition", args.engine.partition,
                 "even, balanced (cost model), counts 5,6,6,7 or a layout emb,0-4|5-9,head")
      ->capture_default_str();
  app.add_option("--layers-per-stage", args.layers_per_stage,
                 "explicit layer counts, e.g. 5,6,6,7 (the same as --partition 5,6,6,7)");
  app.add_option("--microbatches", args.engine.schedule.prefill_micro_batches,
                 "prefill micro-batches (0 = one per stage)")
      ->capture_default_str();
  app.add_option("--decode-microbatches", args.engine.schedule.decode_micro_batches,
                 "decode micro-batches per step (0 = min(stages, sequences) strict, 1 per cohort)")
      ->capture_default_str();
  app.add_option("--chunking", args.chunking,
                 "prefill chunking: auto (chunk only when there are fewer prompts than "
                 "micro-batches; 256-token shares beside running decodes), never, or a chunk size")
      ->capture_default_str();
  app.add_option("--decode-mode", args.decode_mode,
                 "strict (one decode step of everything at a time) or cohorts (one step per "
                 "cohort in flight, overlapping on the stages)")
      ->capture_default_str();
  app.add_option("--cohorts", args.engine.schedule.cohorts,
                 "cohorts with --decode-mode cohorts (0 = one per stage)")
      ->capture_default_str();
  app.add_option("--max-batch", args.engine.capacity.max_batch,
                 "KV slots: requests running at once")
      ->capture_default_str();
  app.add_option("--max-waiting", args.engine.capacity.max_waiting,
                 "requests that may wait for a slot before new ones are refused (serving)")
      ->capture_default_str();
  app.add_option("--link-timeout-ms", args.engine.link_timeout_ms,
                 "how long a stage waits on a link (and, across MPI ranks, for a rank to answer) "
                 "before the step fails");
  app.add_option("--max-context", args.engine.capacity.max_context,
                 "prompt + generated tokens (0 = min(max_position_embeddings, 4096))")
      ->capture_default_str();
}

// Prints loading progress on stderr for checkpoints over ~1 GiB: a bar on a terminal, a line
// per quarter otherwise.
inline std::function<void(const LoadProgress&)> load_progress_printer() {
  const bool terminal = ::isatty(STDERR_FILENO) != 0;
  int last_quarter = 0;
  return [terminal, last_quarter](const LoadProgress& p) mutable {
    if (p.bytes_total < (uint64_t{1} << 30)) return;
    const double fraction = static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
    const double gb = static_cast<double>(p.bytes_done) / 1e9;
    if (terminal) {
      const int width = 30;
      const int filled = static_cast<int>(fraction * width);
      fmt::print(stderr, "\rloading [{}{}] {:3.0f}% {:.2f} GB {:.1f} s", std::string(filled, '#'),
                 std::string(width - filled, ' '), 100 * fraction, gb, p.seconds);
      if (p.bytes_done >= p.bytes_total) fmt::print(stderr, "\n");
    } else if (const int quarter = static_cast<int>(fraction * 4); quarter > last_quarter) {
      last_quarter = quarter;
      fmt::print(stderr, "loading: {:.0f}% ({:.2f} GB in {:.1f} s)\n", 100 * fraction, gb,
                 p.seconds);
    }
  };
}

// Turns the text options into EngineOptions (devices, layer counts, dtype).
inline EngineOptions engine_options(EngineArgs& args) {
  EngineOptions options = args.engine;
  if (!args.layers_per_stage.empty()) {
    if (options.partition != "even") {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("--layers-per-stage {} and --partition {} both give the split; "
                              "pass one of them",
                              args.layers_per_stage, options.partition));
    }
    std::string counts;
    for (int64_t count :
         parse_int_list(args.layers_per_stage, "--layers-per-stage", "layer count", 1, INT32_MAX)) {
      counts += fmt::format("{}{}", counts.empty() ? "" : ",", count);
    }
    options.partition = counts;
  }
  for (int64_t device : parse_int_list(args.devices, "--devices", "CUDA device id", 0, INT32_MAX))
    options.device.cuda_devices.push_back(static_cast<int>(device));
  if (!args.dtype.empty()) {
    DType dtype = DType::kF32;
    if (!parse_dtype(args.dtype, dtype)) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("--dtype {} is not f32, bf16 or f16", args.dtype));
    }
    options.device.dtype = dtype;
  }
  options.schedule.chunking = Chunking::parse(args.chunking);
  options.schedule.decode_mode = parse_decode_mode(args.decode_mode);
  if (!options.on_load_progress) options.on_load_progress = load_progress_printer();
  // Started by mpirun: this process runs its share of the stages (EngineOptions::processes).
  if (launched_by_mpi()) {
    cli_process_group() = mpi_world();
    options.processes = cli_process_group();
    if (options.processes->rank() != 0) options.on_load_progress = nullptr;
  }
  return options;
}

// Across MPI ranks, every rank but 0 runs the leader's steps here until it closes its engine;
// true when this process was such a follower (its binary then ends).
inline bool follow_unless_leader(Engine& engine) {
  if (engine.leader()) return false;
  engine.follow();
  return true;
}

// The tokenizer of --model (or --tokenizer).
inline Tokenizer open_tokenizer(const EngineArgs& args) {
  return Tokenizer::open(args.tokenizer.empty() ? args.model : args.tokenizer);
}

// Prints generated text as it streams: each token's complete characters, the final
// end-of-generation token left out.
inline std::function<void(const TokenEvent&)> stream_to_stdout(const Tokenizer& tokenizer,
                                                               StreamDecoder& stream) {
  return [&tokenizer, &stream](const TokenEvent& event) {
    if (event.finished && tokenizer.is_end_of_generation(event.token)) return;
    fmt::print("{}", stream.push(event.token));
    std::fflush(stdout);
  };
}

// The text of an answer: its tokens without a final end-of-generation token and without
// control tokens, invalid UTF-8 (a cut-off character) replaced.
inline std::string answer_text(const Tokenizer& tokenizer, std::vector<int32_t> tokens) {
  if (!tokens.empty() && tokenizer.is_end_of_generation(tokens.back())) tokens.pop_back();
  return text::replace_invalid_utf8(tokenizer.decode(tokens, {.skip_special = true}));
}

// "load 0.42 s: 98.4 MB read (GGUF v3, ...), 538 MB of fp32 weights (1.28 GB/s)".
inline std::string load_summary(const LoadStats& s) {
  std::string out = fmt::format("load {:.2f} s: {}", s.seconds, s.format);
  if (s.bytes_read > 0)
    out += fmt::format(", {:.1f} MB read", static_cast<double>(s.bytes_read) / 1e6);
  if (s.weight_bytes > 0) {
    out += fmt::format(", {:.1f} MB of fp32 weights ({:.2f} GB/s)",
                       static_cast<double>(s.weight_bytes) / 1e6,
                       s.seconds > 0 ? static_cast<double>(s.weight_bytes) / 1e9 / s.seconds : 0.0);
  }
  return out;
}

}  // namespace conveyor::cli
