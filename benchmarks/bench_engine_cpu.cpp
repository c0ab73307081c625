// CPU engine benchmark (one stage): prefill tokens/s on a 128-token prompt and decode tokens/s of
// the `small` preset with 1 and 2 threads, as fractions of baselines measured in the same run —
// decode against copy bandwidth (weight bytes read per token / time per token; memcpy counted as
// STREAM does, bytes read + written) and against read-only bandwidth, prefill against OpenBLAS
// sgemm FLOP/s. Usage: bench_engine_cpu [model_dir] [out.json]
#include <fmt/format.h>

#include "backend/cpu/blas_kernels.hpp"
#include "bench_common.hpp"
#include "conveyor/engine.hpp"

using namespace conveyor;

int main(int argc, char** argv) {
  conveyor::cpu::reexec_for_blas_kernels(argv);  // before OpenBLAS does any work
  const std::filesystem::path dir =
      argc > 1 ? argv[1] : std::filesystem::temp_directory_path() / "conveyor-bench-small";
  const std::filesystem::path out = argc > 2 ? argv[2] : "bench_engine_cpu.json";
  bench::small_model(dir);
  const ModelConfig config = ModelConfig::load(dir);
  // Bytes a decode step must read: every weight except the embedding table (one row of it).
  const double decode_bytes =
      4.0 * static_cast<double>(config.n_params() - config.vocab_size * config.hidden_size +
                                config.hidden_size);
  // Prefill FLOPs per token: 2 per weight of the layers and the head, plus attention (QK and PV).
  const int64_t prompt_len = 128, new_tokens = 33;
  const double attention_flops =
      2.0 * 2.0 * static_cast<double>(config.n_layers * config.q_dim()) * (prompt_len + 1) / 2.0;
  const double prefill_flops_per_token =
      2.0 * static_cast<double>(config.n_layers * config.layer_params() +
                                config.vocab_size * config.hidden_size) +
      attention_flops;

  nlohmann::json results = nlohmann::json::array();
  fmt::print("{:>7} | {:>13} {:>10} {:>8} | {:>12} {:>10} {:>10} {:>8} {:>10} {:>8}\n", "threads",
             "prefill tok/s", "sgemm GF/s", "of sgemm", "decode tok/s", "decode GB/s", "copy GB/s",
             "of copy", "read GB/s", "of read");
  for (int threads : {1, 2}) {
    const double copy = bench::copy_bandwidth(threads);
    const double read = bench::read_bandwidth(threads);
    const double sgemm = bench::sgemm_flops(threads);
    Engine engine =
        Engine::open(dir, {.device = {.threads_per_stage = threads}, .capacity = {.max_batch = 1}});
    Request request;
    for (int64_t i = 0; i < prompt_len; ++i)
      request.prompt.push_back(static_cast<int32_t>((i * 37 + 11) % 32000));
    request.max_new_tokens = new_tokens;
    request.stop_at_eos = false;
    engine.generate({request});  // warm-up
    double best_prefill = 1e30, best_decode = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      GenerateResult r = engine.generate({request});
      best_prefill = std::min(best_prefill, r.prefill_seconds);
      best_decode = std::min(best_decode, r.decode_seconds / static_cast<double>(r.decode_tokens));
    }
    const double prefill_tps = static_cast<double>(prompt_len) / best_prefill;
    const double prefill_fraction = prefill_tps * prefill_flops_per_token / sgemm;
    const double decode_tps = 1.0 / best_decode;
    const double decode_bw = decode_bytes / best_decode;
    const double decode_fraction = decode_bw / copy;
    fmt::print(
        "{:>7} | {:>13.1f} {:>10.1f} {:>7.1f}% | {:>12.2f} {:>10.2f} {:>10.2f} {:>7.1f}% {:>10.2f} "
        "{:>7.1f}%\n",
        threads, prefill_tps, sgemm / 1e9, 100 * prefill_fraction, decode_tps, decode_bw / 1e9,
        copy / 1e9, 100 * decode_fraction, read / 1e9, 100 * decode_bw / read);
    results.push_back({{"threads", threads},
                       {"prefill_tokens_per_s", prefill_tps},
                       {"prefill_gflops", prefill_tps * prefill_flops_per_token / 1e9},
                       {"sgemm_gflops", sgemm / 1e9},
                       {"prefill_fraction_of_sgemm", prefill_fraction},
                       {"decode_tokens_per_s", decode_tps},
                       {"decode_gb_per_s", decode_bytes / best_decode / 1e9},
                       {"copy_gb_per_s", copy / 1e9},
                       {"decode_fraction_of_copy", decode_fraction},
                       {"read_gb_per_s", read / 1e9},
                       {"decode_fraction_of_read", decode_bw / read}});
  }
  bench::write_json(out, {{"model", "small preset, f32"},
                          {"prompt_tokens", prompt_len},
                          {"decode_bytes_per_token", decode_bytes},
                          {"results", results}});
  return 0;
}
