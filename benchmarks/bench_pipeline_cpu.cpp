// CPU pipeline benchmark: prefill of 8 prompts x 512 tokens of the `small` preset on S = 2 stages
// (one thread each) against S = 1 (one thread) in the same run, for M in {1, 2, 4, 8}
// micro-batches: throughput ratio against the ideal 2M/(M+1) and the measured bubble fraction.
// Then the decode step time for S = 1..4 (batch 1): the per-hop overhead.
// Usage: bench_pipeline_cpu [model_dir] [out.json] [timeline.svg]
#include <fmt/format.h>

#include "backend/cpu/blas_kernels.hpp"
#include "bench_common.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/observe.hpp"

using namespace conveyor;

namespace {

std::vector<Request> prompts(int n, int64_t length, int64_t new_tokens) {
  std::vector<Request> requests(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    for (int64_t i = 0; i < length; ++i) {
      requests[static_cast<size_t>(r)].prompt.push_back(
          static_cast<int32_t>((r * 7919 + i * 37) % 32000));
    }
    requests[static_cast<size_t>(r)].max_new_tokens = new_tokens;
    requests[static_cast<size_t>(r)].stop_at_eos = false;
  }
  return requests;
}

struct PrefillRun {
  double seconds = 1e30;
  BalanceReport balance;
  Trace trace;
};

PrefillRun run_prefill(const std::filesystem::path& dir, int stages, int micro, int reps) {
  Engine engine =
      Engine::open(dir, {.n_stages = stages, .schedule = {.prefill_micro_batches = micro}});
  const auto requests = prompts(8, 512, 1);
  PrefillRun best;
  for (int rep = 0; rep < reps; ++rep) {
    GenerateResult r = engine.generate(requests, {.record_trace = true});
    if (r.prefill_seconds < best.seconds) {
      best.seconds = r.prefill_seconds;
      best.trace = r.trace;
      best.balance = balance_report_for_phase(r.trace, stages, micro, Phase::kPrefill);
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  conveyor::cpu::reexec_for_blas_kernels(argv);  // before OpenBLAS does any work
  const std::filesystem::path dir =
      argc > 1 ? argv[1] : std::filesystem::temp_directory_path() / "conveyor-bench-small";
  const std::filesystem::path out = argc > 2 ? argv[2] : "bench_pipeline_cpu.json";
  const std::filesystem::path svg = argc > 3 ? argv[3] : "pipeline_s2_m8.svg";
  bench::small_model(dir);
  const int reps = 2;

  nlohmann::json prefill = nlohmann::json::array();
  const PrefillRun base = run_prefill(dir, 1, 1, reps);
  const double tokens = 8.0 * 512.0;
  fmt::print("prefill, 8 x 512 tokens; S=1 (1 thread): {:.2f} s = {:.1f} tok/s\n", base.seconds,
             tokens / base.seconds);
  fmt::print("{:>3} | {:>8} {:>9} {:>8} {:>8} {:>9} | {:>9} {:>9} {:>9}\n", "M", "S=2 s", "tok/s",
             "ratio", "ideal", "of ideal", "bubble", "ideal bub", "imbalance");
  for (int micro : {1, 2, 4, 8}) {
    const PrefillRun run = run_prefill(dir, 2, micro, reps);
    const double ratio = base.seconds / run.seconds;
    const double ideal = 2.0 * micro / (micro + 1.0);
    fmt::print(
        "{:>3} | {:>8.2f} {:>9.1f} {:>8.3f} {:>8.3f} {:>8.1f}% | {:>9.3f} {:>9.3f} {:>9.3f}\n",
        micro, run.seconds, tokens / run.seconds, ratio, ideal, 100 * ratio / ideal,
        run.balance.bubble_fraction, run.balance.ideal_bubble_fraction, run.balance.imbalance);
    prefill.push_back({{"micro_batches", micro},
                       {"s1_seconds", base.seconds},
                       {"s2_seconds", run.seconds},
                       {"throughput_ratio", ratio},
                       {"ideal_ratio", ideal},
                       {"fraction_of_ideal", ratio / ideal},
                       {"bubble_fraction", run.balance.bubble_fraction},
                       {"ideal_bubble_fraction", run.balance.ideal_bubble_fraction},
                       {"imbalance", run.balance.imbalance}});
    if (micro == 8) {
      write_timeline_svg(
          svg, run.trace, 2,
          {.title = "small preset, prefill 8 x 512 tokens, S=2, M=8 (CPU, 1 thread/stage)"});
    }
  }

  nlohmann::json decode = nlohmann::json::array();
  double step_s1 = 0.0;
  fmt::print(
      "\ndecode, batch 1, 128-token prompt, 32 steps (1 thread per stage)\n{:>3} | {:>10} {:>12} "
      "{:>14}\n",
      "S", "step ms", "vs S=1", "per hop ms");
  for (int stages = 1; stages <= 4; ++stages) {
    Engine engine = Engine::open(dir, {.n_stages = stages, .capacity = {.max_batch = 1}});
    auto requests = prompts(1, 128, 33);
    engine.generate(requests);  // warm-up
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      GenerateResult r = engine.generate(requests);
      best = std::min(best, r.decode_seconds / static_cast<double>(r.decode_tokens));
    }
    if (stages == 1) step_s1 = best;
    const double per_hop = stages > 1 ? (best - step_s1) / (stages - 1) : 0.0;
    fmt::print("{:>3} | {:>10.2f} {:>12.3f} {:>14.3f}\n", stages, best * 1e3, best / step_s1,
               per_hop * 1e3);
    decode.push_back({{"stages", stages},
                      {"step_ms", best * 1e3},
                      {"ratio_to_s1", best / step_s1},
                      {"per_hop_ms", per_hop * 1e3}});
  }
  bench::write_json(out,
                    {{"model", "small preset, f32"}, {"prefill", prefill}, {"decode", decode}});
  return 0;
}
