// conveyor-bench: stage-balance sweeps (stages x micro-batches x partition strategy x chunk size)
// on the CPU backend, measured against the simulator's prediction; --profile measures unit times.
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>
#include "backend/cpu/blas_kernels.hpp"
#include "cli_errors.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>
#include <tuple>

#include <unistd.h>

#include "conveyor/cost_model.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/observe.hpp"
#include "conveyor/partitioner.hpp"
#include "conveyor/process_group.hpp"
#include "conveyor/profiler.hpp"
#include "conveyor/schedule.hpp"
#include "conveyor/simulator.hpp"
#include "core/check.hpp"
#include "core/stats.hpp"
#include "model/make_model.hpp"

namespace {

using namespace conveyor;

struct Args {
  std::string model;
  std::string preset;
  std::string config;
  bool random_weights = false;
  uint64_t seed = 1;
  std::string profile_out;
  std::string profile_in;
  bool profile_only = false;
  std::vector<int> stages = {1, 2};
  std::vector<int> microbatches = {1, 4, 8};
  std::vector<std::string> strategies = {"even", "balanced"};
  std::vector<std::string> chunkings = {"auto"};
  std::vector<std::string> decode_modes = {"strict"};
  std::string partition;  // strategy "given"
  int64_t prompt_tokens = 512;
  int32_t batch = 1;
  int64_t new_tokens = 1;
  int threads = 1;
  int repeats = 3;
  // Cores the stages share in the prediction. -1: this machine's cores / threads per stage (the
  // profile's measured contention is recorded but is too noisy on shared machines to predict
  // with); 0: every stage its own core.
  double host_cores = -1.0;
  std::string json_out;
  std::string svg_dir;
  bool keep_model = false;
};

// A model directory that deletes itself unless kept.
class ModelDir {
 public:
  explicit ModelDir(std::filesystem::path path, bool owned)
      : path_(std::move(path)), owned_(owned) {}
  ~ModelDir() {
    if (owned_) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  bool owned_;
};

std::unique_ptr<ModelDir> prepare_model(const Args& args) {
  const int sources = !args.model.empty() + !args.preset.empty() + !args.config.empty();
  if (sources != 1) {
    fail(ErrorCode::kInvalidArgument,
         "give exactly one of --model DIR, --preset NAME or --random-weights --config FILE");
  }
  if (!args.model.empty()) return std::make_unique<ModelDir>(args.model, false);
  if (!args.config.empty() && !args.random_weights) {
    fail(ErrorCode::kInvalidArgument,
         "--config needs --random-weights (a config.json alone has no weights to run)");
  }
  ModelConfig config =
      args.preset.empty() ? ModelConfig::load(args.config) : preset_config(args.preset);
  const auto dir = std::filesystem::temp_directory_path() /
                   fmt::format("conveyor-bench-{}-{}", ::getpid(), args.seed);
  fmt::print("writing a random {:.1f}M-parameter f32 model to {} ...\n",
             static_cast<double>(config.n_params()) / 1e6, dir.string());
  std::fflush(stdout);
  MakeModelOptions options;
  options.config = config;
  options.dtype = DType::kF32;
  options.seed = args.seed;
  options.out_dir = dir;
  make_model(options);
  return std::make_unique<ModelDir>(dir, !args.keep_model);
}

std::vector<int32_t> prompt_ids(int64_t n, int64_t vocab, int32_t salt) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + salt * 104729 + 13) % vocab);
  }
  return ids;
}

// ---- sweeps ----------------------------------------------------------------------------------

struct RunResult {
  int stages = 1;
  int micro_batches = 1;  // as planned
  std::string strategy;
  Chunking chunking;
  int64_t chunk_tokens = 0;  // as planned for the prefill (0: whole prompts)
  DecodeMode decode_mode = DecodeMode::kStrict;
  Partition partition = Partition::even(1, 1);
  double measured_s = 0.0;  // median prefill step over the repeats
  double predicted_s = 0.0;
  double measured_decode_tok_s = 0.0;  // decode tokens / decode wall time, median over repeats
  double predicted_decode_tok_s = 0.0;
  double decode_bubble = 0.0;  // measured idle fraction of the stages while decoding
  double predicted_decode_bubble = 0.0;
  BalanceReport measured;
  BalanceReport predicted;
  Trace trace;  // the median repeat's prefill events
};

std::string stage_line(const BalanceReport& r) {
  std::string out;
  for (const StageBalance& s : r.stages) {
    out += fmt::format(" s{} {:.1f}/{:.1f}", s.stage, s.busy_us / 1e3, s.idle_us / 1e3);
  }
  return out;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) fail(ErrorCode::kInvalidArgument, "cannot write {}", path.string());
}

// A bar chart: imbalance (max/mean busy) per strategy, measured and predicted, averaged over runs.
std::string imbalance_svg(const std::vector<RunResult>& runs) {
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> by;
  for (const RunResult& r : runs) {
    if (r.stages < 2) continue;
    by[r.strategy].first.push_back(r.measured.imbalance);
    by[r.strategy].second.push_back(r.predicted.imbalance);
  }
  const int width = 160 * std::max<int>(1, static_cast<int>(by.size())) + 120, height = 320;
  double top = 1.0;
  for (const auto& [name, v] : by) {
    for (double x : v.first)
      top = std::max(top, x);
    for (double x : v.second)
      top = std::max(top, x);
  }
  top *= 1.1;
  auto y_of = [&](double v) { return 260.0 - 220.0 * v / top; };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">stage imbalance (max/mean busy) "
      "per partition strategy, S &gt;= 2: measured (dark) vs predicted (light)</text>\n",
      width, height);
  svg += fmt::format(
      "<line x1=\"60\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#888\" "
      "stroke-dasharray=\"4\"/><text x=\"10\" y=\"{:.1f}\">1.0</text>\n",
      y_of(1.0), width - 20, y_of(1.0), y_of(1.0) + 4);
  int x = 80;
  for (const auto& [name, v] : by) {
    auto mean = [](const std::vector<double>& a) {
      double s = 0;
      for (double e : a)
        s += e;
      return a.empty() ? 0.0 : s / static_cast<double>(a.size());
    };
    const double m = mean(v.first), p = mean(v.second);
    svg += fmt::format(
        "<rect x=\"{}\" y=\"{:.1f}\" width=\"50\" height=\"{:.1f}\" "
        "fill=\"#3b6ea5\"/><text x=\"{}\" y=\"{:.1f}\">{:.3f}</text>\n",
        x, y_of(m), 260.0 - y_of(m), x, y_of(m) - 4, m);
    svg += fmt::format(
        "<rect x=\"{}\" y=\"{:.1f}\" width=\"50\" height=\"{:.1f}\" "
        "fill=\"#9cc3e6\"/><text x=\"{}\" y=\"{:.1f}\">{:.3f}</text>\n",
        x + 55, y_of(p), 260.0 - y_of(p), x + 55, y_of(p) - 4, p);
    svg += fmt::format("<text x=\"{}\" y=\"285\">{} ({} runs)</text>\n", x, name, v.first.size());
    x += 160;
  }
  svg += "</svg>\n";
  return svg;
}

int run(const Args& args) {
  const auto model_dir = prepare_model(args);
  const ModelConfig config = ModelConfig::load(model_dir->path());
  const CostModel model(
      config,
      {.weight_dtype = DType::kF32, .kv_dtype = DType::kF32, .activation_dtype = DType::kF32});
  Profile profile;
  if (!args.profile_in.empty()) {
    profile = Profile::load(args.profile_in);
    model.check_profile(profile);
  } else {
    fmt::print("profiling units ({} thread(s)) ...\n", args.threads);
    std::fflush(stdout);
    const auto start = Clock::now();
    profile = measure_profile(
        model_dir->path(),
        ProfilerOptions{.device = {.threads_per_stage = args.threads}, .repeats = args.repeats});
    fmt::print(
        "profiled in {:.1f} s: layer prefill {:.1f} us + {:.2f} us/token + {:.4f} us/pair; "
        "layer decode {:.1f} us + {:.1f} us/seq; head {:.1f} us + {:.1f} us/row; link "
        "{:.1f} us; host cores {:.2f}\n",
        seconds_since(start), profile.layer_prefill.base_s * 1e6,
        profile.layer_prefill.per_token_s * 1e6, profile.layer_prefill.per_pair_s * 1e6,
        profile.layer_decode.base_s * 1e6, profile.layer_decode.per_token_s * 1e6,
        profile.head_prefill.base_s * 1e6, profile.head_prefill.per_token_s * 1e6,
        profile.link_latency_s * 1e6, profile.host_cores);
    if (!args.profile_out.empty()) {
      profile.save(args.profile_out);
      fmt::print("wrote profile to {}\n", args.profile_out);
    }
  }
  if (args.profile_only) return 0;

  DeviceSpec device = device_preset("cpu");
  device.name = "cpu";
  device.profile = profile;
  const double host_cores =
      args.host_cores >= 0.0
          ? args.host_cores
          : static_cast<double>(std::max(1u, std::thread::hardware_concurrency())) / args.threads;
  const SimulatorOptions sim{.topology = {.devices = {device}}, .host_cores = host_cores};

  std::vector<Request> requests;
  for (int32_t r = 0; r < args.batch; ++r) {
    Request req;
    req.prompt = prompt_ids(args.prompt_tokens, config.vocab_size, r);
    req.max_new_tokens = args.new_tokens;
    req.stop_at_eos = false;
    requests.push_back(std::move(req));
  }

  std::vector<std::pair<std::string, std::string>> combinations;  // (chunking, decode mode)
  for (const std::string& c : args.chunkings) {
    for (const std::string& m : args.decode_modes)
      combinations.emplace_back(c, m);
  }
  std::vector<RunResult> runs;
  fmt::print("\n{:>2} {:>3} {:>9} {:>6} {:>12} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n",
             "S", "M", "strategy", "chunk", "partition", "meas ms", "pred ms", "pred/m", "imbal",
             "bubble", "ideal", "pr.bub", "per stage busy/idle ms (measured)");
  for (int S : args.stages) {
    if (S > config.n_layers) continue;
    for (const std::string& strategy : args.strategies) {
      for (int M : args.microbatches) {
        for (const auto& [chunking_text, mode_text] : combinations) {
          const SchedulePolicy policy{.prefill_micro_batches = M,
                                      .chunking = Chunking::parse(chunking_text),
                                      .decode_mode = parse_decode_mode(mode_text)};
          const std::vector<int64_t> prompt_lengths(static_cast<size_t>(args.batch),
                                                    args.prompt_tokens);
          const int64_t chunk = prefill_chunk_tokens(policy, S, prompt_lengths);
          // Partition for this configuration.
          Partition partition = Partition::even(config.n_layers, S);
          if (strategy == "balanced") {
            PartitionerOptions o;
            o.n_stages = S;
            o.topology.devices = {device};
            o.objective = Objective::kPrefillThroughput;
            const int64_t mb_tokens =
                chunk > 0 ? chunk : std::max<int64_t>(1, args.prompt_tokens * args.batch / M);
            o.prefill = Workload::prefill({.tokens_per_seq = mb_tokens});
            o.max_context = args.prompt_tokens + args.new_tokens;
            o.max_batch = args.batch;
            partition = balanced_partition(model, o).partition;
          } else if (strategy == "given") {
            partition = parse_partition_spec(args.partition, config.n_layers, S);
          } else if (strategy != "even") {
            fail(ErrorCode::kInvalidArgument, "unknown strategy \"{}\"; use even, balanced, given",
                 strategy);
          }
          EngineOptions eo;
          eo.partition = partition.to_string();
          eo.device.threads_per_stage = args.threads;
          eo.schedule = policy;
          eo.capacity.max_batch = std::max<int32_t>(args.batch, 1);
          eo.capacity.max_context = args.prompt_tokens + args.new_tokens;
          eo.processes = cli_process_group();  // under mpirun: S / N stages per rank
          Engine engine = Engine::open(model_dir->path(), eo);
          if (!engine.leader()) {
            engine.follow();  // rank 0 measures; this rank runs its stages until it is done
            continue;
          }
          const GenerateOptions traced{.record_trace = true};
          engine.generate(requests, traced);  // warm-up: page-in weights, grow buffers
          std::vector<std::pair<double, Trace>> prefills;
          std::vector<std::pair<double, double>> decodes;  // (tokens/s, bubble)
          int planned_m = M;
          int decode_m = 1;
          for (int r = 0; r < args.repeats; ++r) {
            GenerateResult res = engine.generate(requests, traced);
            Trace prefill_trace;
            for (const TraceEvent& e : res.trace) {
              if (e.phase == Phase::kPrefill) prefill_trace.push_back(e);
            }
            for (const StepStats& st : res.steps) {
              if (st.phase == Phase::kPrefill) planned_m = st.n_micro_batches;
              if (st.phase == Phase::kDecode) decode_m = st.n_micro_batches;
            }
            prefills.emplace_back(res.prefill_seconds, std::move(prefill_trace));
            if (res.decode_seconds > 0) {
              decodes.emplace_back(
                  static_cast<double>(res.decode_tokens) / res.decode_seconds,
                  balance_report_for_phase(res.trace, S, decode_m, Phase::kDecode).bubble_fraction);
            }
          }
          std::sort(prefills.begin(), prefills.end(),
                    [](const auto& a, const auto& b) { return a.first < b.first; });
          std::sort(decodes.begin(), decodes.end());
          RunResult run;
          run.stages = S;
          run.micro_batches = planned_m;
          run.strategy = strategy;
          run.chunking = policy.chunking;
          run.chunk_tokens = chunk;
          run.decode_mode = policy.decode_mode;
          run.partition = partition;
          run.measured_s = prefills[prefills.size() / 2].first;
          run.trace = prefills[prefills.size() / 2].second;
          if (!decodes.empty()) {
            std::tie(run.measured_decode_tok_s, run.decode_bubble) = decodes[decodes.size() / 2];
          }
          const GenerationShape shape{.n_seqs = args.batch,
                                      .prompt_tokens = args.prompt_tokens,
                                      .new_tokens = args.new_tokens,
                                      .policy = policy};
          const SimulatedGeneration gen = simulate_generation(shape, partition, model, sim);
          run.predicted_s = gen.prefill_seconds;
          if (gen.decode_seconds > 0) {
            run.predicted_decode_tok_s = static_cast<double>(args.batch) *
                                         static_cast<double>(args.new_tokens - 1) /
                                         gen.decode_seconds;
            run.predicted_decode_bubble =
                balance_report_for_phase(gen.trace, S, std::max(gen.decode_micro_batches, 1),
                                         Phase::kDecode)
                    .bubble_fraction;
          }
          run.measured = balance_report(run.trace, S, planned_m);
          Trace predicted_prefill;
          for (const TraceEvent& e : gen.trace) {
            if (e.phase == Phase::kPrefill) predicted_prefill.push_back(e);
          }
          run.predicted = balance_report(predicted_prefill, S, planned_m);
          fmt::print(
              "{:>2} {:>3} {:>9} {:>6} {:>12} {:>10.2f} {:>10.2f} {:>7.3f} {:>7.3f} {:>7.3f} "
              "{:>7.3f} {:>7.3f} {}\n",
              S, planned_m, strategy, chunk, partition.to_string(), run.measured_s * 1e3,
              run.predicted_s * 1e3, run.predicted_s / run.measured_s, run.measured.imbalance,
              run.measured.bubble_fraction, run.measured.ideal_bubble_fraction,
              run.predicted.bubble_fraction, stage_line(run.measured));
          std::fflush(stdout);
          runs.push_back(std::move(run));
        }
      }
    }
  }
  if (const auto& group = cli_process_group(); group && group->rank() != 0) return 0;
  // Same-run baseline: the machine is shared, so unit times drift between the profile and the
  // sweep. Rescale the predictions by the single-stage run's measured / predicted time (its
  // prediction is just the sum of the unit times) and report both ratios.
  double scale = 0.0;
  for (const RunResult& r : runs) {
    if (r.stages == 1 && r.micro_batches == 1 && r.chunk_tokens == 0 && scale == 0.0) {
      scale = r.measured_s / r.predicted_s;
    }
  }
  if (scale > 0.0) {
    fmt::print("\nbaseline S=1 M=1: measured / predicted = {:.3f}; rescaled predictions:\n", scale);
    for (const RunResult& r : runs) {
      if (r.stages == 1) continue;
      fmt::print(
          "S={} M={} {:>9} chunk {:>4} {:>8}: measured {:.2f} ms, rescaled prediction "
          "{:.2f} ms, ratio {:.3f}\n",
          r.stages, r.micro_batches, r.strategy, r.chunk_tokens, r.partition.to_string(),
          r.measured_s * 1e3, r.predicted_s * scale * 1e3, r.predicted_s * scale / r.measured_s);
    }
  }
  if (args.new_tokens > 1) {
    fmt::print("\ndecode (median of {} runs):\n", args.repeats);
    for (const RunResult& r : runs) {
      fmt::print(
          "S={} {:>7} {:>9} {:>12}: measured {:.1f} tok/s (bubble {:.3f}), predicted {:.1f} "
          "tok/s (bubble {:.3f})\n",
          r.stages, to_string(r.decode_mode), r.strategy, r.partition.to_string(),
          r.measured_decode_tok_s, r.decode_bubble, r.predicted_decode_tok_s,
          r.predicted_decode_bubble);
    }
  }
  fmt::print(
      "\npred/m: predicted / measured prefill step (median of {} runs); imbal: max/mean busy; "
      "bubble: measured idle fraction; ideal: (S-1)/(M+S-1); pr.bub: predicted bubble\n",
      args.repeats);

  if (!args.json_out.empty()) {
    nlohmann::json j;
    j["model"] = model_dir->path().string();
    j["model_shape"] = model_shape_key(config);
    j["threads_per_stage"] = args.threads;
    j["prompt_tokens"] = args.prompt_tokens;
    j["batch"] = args.batch;
    j["repeats"] = args.repeats;
    j["baseline_scale"] = scale;
    j["profile"] = nlohmann::json::parse(profile.to_json());
    nlohmann::json list = nlohmann::json::array();
    for (const RunResult& r : runs) {
      nlohmann::json stages = nlohmann::json::array();
      for (size_t s = 0; s < r.measured.stages.size(); ++s) {
        stages.push_back({{"stage", s},
                          {"busy_ms", r.measured.stages[s].busy_us / 1e3},
                          {"idle_ms", r.measured.stages[s].idle_us / 1e3},
                          {"predicted_busy_ms", r.predicted.stages[s].busy_us / 1e3}});
      }
      list.push_back({{"stages", r.stages},
                      {"micro_batches", r.micro_batches},
                      {"strategy", r.strategy},
                      {"chunking", r.chunking.to_string()},
                      {"chunk_tokens", r.chunk_tokens},
                      {"decode_mode", std::string(to_string(r.decode_mode))},
                      {"partition", r.partition.to_string()},
                      {"measured_s", r.measured_s},
                      {"predicted_s", r.predicted_s},
                      {"predicted_over_measured", r.predicted_s / r.measured_s},
                      {"measured_decode_tokens_per_s", r.measured_decode_tok_s},
                      {"predicted_decode_tokens_per_s", r.predicted_decode_tok_s},
                      {"decode_bubble_fraction", r.decode_bubble},
                      {"predicted_decode_bubble_fraction", r.predicted_decode_bubble},
                      {"imbalance", r.measured.imbalance},
                      {"predicted_imbalance", r.predicted.imbalance},
                      {"bubble_fraction", r.measured.bubble_fraction},
                      {"ideal_bubble_fraction", r.measured.ideal_bubble_fraction},
                      {"predicted_bubble_fraction", r.predicted.bubble_fraction},
                      {"per_stage", stages}});
    }
    j["runs"] = list;
    write_file(args.json_out, j.dump(2) + "\n");
    fmt::print("wrote {}\n", args.json_out);
  }
  if (!args.svg_dir.empty() && !runs.empty()) {
    std::filesystem::create_directories(args.svg_dir);
    // Best and worst by measured pipeline efficiency among multi-stage runs.
    const RunResult* best = nullptr;
    const RunResult* worst = nullptr;
    for (const RunResult& r : runs) {
      if (r.stages < 2 && runs.size() > 1) continue;
      if (!best || r.measured.bubble_fraction < best->measured.bubble_fraction) best = &r;
      if (!worst || r.measured.bubble_fraction > worst->measured.bubble_fraction) worst = &r;
    }
    if (best) {
      auto title = [](const RunResult& r, const char* which) {
        return fmt::format("{}: S={} M={} {} {} chunk {}, bubble {:.3f} (ideal {:.3f})", which,
                           r.stages, r.micro_batches, r.strategy, r.partition.to_string(),
                           r.chunk_tokens, r.measured.bubble_fraction,
                           r.measured.ideal_bubble_fraction);
      };
      write_timeline_svg(std::filesystem::path(args.svg_dir) / "timeline_best.svg", best->trace,
                         best->stages, {.title = title(*best, "best")});
      write_timeline_svg(std::filesystem::path(args.svg_dir) / "timeline_worst.svg", worst->trace,
                         worst->stages, {.title = title(*worst, "worst")});
    }
    write_file(std::filesystem::path(args.svg_dir) / "imbalance.svg", imbalance_svg(runs));
    fmt::print("wrote timeline_best.svg, timeline_worst.svg and imbalance.svg to {}\n",
               args.svg_dir);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  conveyor::cpu::reexec_for_blas_kernels(argv);  // before OpenBLAS does any work
  Args args;
  CLI::App app{"conveyor-bench: pipeline stage-balance sweeps, measured vs predicted"};
  app.add_option("--model", args.model, "model directory with real weights");
  app.add_option("--preset", args.preset, "random model of a preset shape (tiny, small)");
  app.add_option("--config", args.config, "random model of this config.json's shape");
  app.add_flag("--random-weights", args.random_weights, "with --config: draw random weights");
  app.add_option("--seed", args.seed, "seed of the random weights")->capture_default_str();
  app.add_flag("--keep-model", args.keep_model, "keep the random model's temp directory");
  app.add_option("--profile", args.profile_out, "measure unit times and write them as JSON");
  app.add_flag("--profile-only", args.profile_only, "stop after --profile");
  app.add_option("--use-profile", args.profile_in,
                 "predict with this profile instead of measuring");
  app.add_option("--stages", args.stages, "stage counts to sweep")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--microbatches", args.microbatches, "prefill micro-batch counts to sweep")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--strategies", args.strategies, "partition strategies: even, balanced, given")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--partition", args.partition, "the partition of strategy \"given\"");
  app.add_option("--chunking", args.chunkings,
                 "prefill chunkings to sweep: auto, never or a chunk size in tokens")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--decode-modes", args.decode_modes, "decode modes to sweep: strict, cohorts")
      ->delimiter(',')
      ->capture_default_str();
  app.add_option("--prompt-tokens", args.prompt_tokens, "tokens per prompt")->capture_default_str();
  app.add_option("--batch", args.batch, "prompts per run")->capture_default_str();
  app.add_option("--new-tokens", args.new_tokens, "tokens generated per prompt (1 = prefill only)")
      ->capture_default_str();
  app.add_option("--threads", args.threads, "threads per stage")->capture_default_str();
  app.add_option("--repeats", args.repeats, "measured runs per configuration (median)")
      ->capture_default_str();
  app.add_option("--host-cores", args.host_cores,
                 "cores the stages share in the prediction (-1: this machine's cores / --threads, "
                 "0: one per stage)")
      ->capture_default_str();
  app.add_option("--json", args.json_out, "write every run as JSON");
  app.add_option("--svg-dir", args.svg_dir, "write timeline_best/worst.svg and imbalance.svg here");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);
  return run_reporting_errors([&] {
    if (args.repeats < 1) fail(ErrorCode::kInvalidArgument, "--repeats must be at least 1");
    if (launched_by_mpi()) {
      // Stages as MPI ranks: every rank sweeps the same runs; rank 0 measures and reports.
      cli_process_group() = mpi_world();
      const int ranks = cli_process_group()->size();
      for (int S : args.stages) {
        if (S % ranks != 0) {
          fail(ErrorCode::kInvalidArgument,
               "--stages {} cannot be shared by {} MPI ranks; sweep multiples of {} (e.g. "
               "--stages {})",
               S, ranks, ranks, ranks);
        }
      }
      if (cli_process_group()->rank() != 0 && std::freopen("/dev/null", "w", stdout) == nullptr) {
        fail(ErrorCode::kInternal, "cannot silence rank {}'s output", cli_process_group()->rank());
      }
    }
    return run(args);
  });
}
