// measure_profile over the StageBackend interface: stages built as the Engine builds them, unit
// passes timed as compute + rollback (which waits for a device), fits by Profile::fit.
#include "conveyor/profiler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <thread>

#include "backend/link.hpp"
#include "conveyor/checkpoint.hpp"
#include "conveyor/cost_model.hpp"
#include "core/check.hpp"
#include "core/stats.hpp"
#include "engine/stage_factory.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

// Times f() `reps` times after one warm-up call; returns the median seconds.
template <typename F>
double time_median(int reps, F&& f) {
  f();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto start = Clock::now();
    f();
    t.push_back(seconds_since(start));
  }
  return median(t);
}

std::vector<int32_t> prompt_ids(int64_t n, int64_t vocab, int32_t salt) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + salt * 104729 + 13) % vocab);
  }
  return ids;
}

}  // namespace

Profile measure_profile(const std::filesystem::path& model, const ProfilerOptions& options) {
  if (options.repeats < 1) {
    fail(ErrorCode::kInvalidArgument, "profiler repeats is {} but must be at least 1",
         options.repeats);
  }
  const int reps = options.repeats;
  std::optional<Checkpoint> checkpoint;
  if (!options.random_weights_seed) checkpoint = Checkpoint::open(model);
  const ModelConfig config = checkpoint ? checkpoint->config : ModelConfig::load(model);
  const BackendKind backend = resolve_backend(options.device.backend);
  constexpr int32_t kSeqs = 8;
  const int64_t max_context =
      std::min<int64_t>(config.max_position_embeddings, std::max<int64_t>(options.max_context, 64));
  std::vector<std::vector<int32_t>> tokens;
  for (int32_t s = 0; s < kSeqs; ++s)
    tokens.push_back(prompt_ids(max_context, config.vocab_size, s));
  std::vector<SamplingParams> sampling(kSeqs);
  std::vector<int32_t> slots(kSeqs);  // commits and rollbacks cover every slot
  std::iota(slots.begin(), slots.end(), 0);
  StepContext ctx{.tokens = tokens, .sampling = sampling};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random_rows = [&](int64_t rows) {
    std::vector<float> a(static_cast<size_t>(rows * config.hidden_size));
    for (float& x : a)
      x = normal(rng);
    return a;
  };
  EngineOptions engine_options;
  engine_options.device = options.device;
  engine_options.capacity.max_batch = kSeqs;
  const int device = options.device.cuda_devices.empty() ? 0 : options.device.cuda_devices.front();
  auto make_stage = [&](StageWeightsSpec spec) {
    StageSource weights =
        checkpoint
            ? StageSource(StageCheckpoint{.tensors = checkpoint->tensors.get(), .spec = spec})
            : StageSource(random_stage_draws(config, spec, *options.random_weights_seed));
    return make_stage_backend(
        backend, config, std::move(weights), engine_options,
        StageResources{.stage = 0, .device = device, .max_context = max_context});
  };

  Profile p;
  p.device =
      backend == BackendKind::kCuda
          ? fmt::format("cuda device {}, {}", device,
                        dtype_name(options.device.dtype.value_or(DType::kBF16)))
          : fmt::format("cpu fp32, {} thread(s) per stage, {} hardware threads",
                        options.device.threads_per_stage, std::thread::hardware_concurrency());
  p.model_shape = model_shape_key(config);
  int64_t step = 0;

  // One decoder layer: prefill (tokens x past) and decode (sequences x context).
  {
    auto stage = make_stage({.first_layer = 0, .last_layer = 1});
    const std::vector<std::pair<int64_t, int64_t>> prefill = {
        {32, 0}, {64, 0}, {128, 0}, {256, 0}, {512, 0}, {64, 448}, {128, 384}, {256, 256}};
    for (const auto& [t, past] : prefill) {
      if (past + t > max_context) continue;
      stage->truncate(0, 0);
      if (past > 0) {
        MicroBatch warm{.id = 0, .step = step, .chunks = {{0, 0, past, false}}};
        Activations a{.host = random_rows(past)};
        stage->compute(warm, ctx, a);
        stage->commit(step++, slots);
      }
      MicroBatch mb{.id = 0, .step = step, .chunks = {{0, past, past + t, true}}};
      const std::vector<float> input = random_rows(t);
      Activations a;
      const double s = time_median(reps, [&] {
        a.host = input;
        stage->compute(mb, ctx, a);
        stage->rollback(slots);
      });
      const Workload w = Workload::of(mb, Phase::kPrefill);
      p.samples.push_back(
          {UnitKind::kDecoderLayer, Phase::kPrefill, w.n_tokens, w.attention_pairs, s});
    }
    for (int64_t context : {64, 512}) {
      if (context > max_context) continue;
      for (int32_t s = 0; s < kSeqs; ++s) {
        stage->truncate(s, 0);
        MicroBatch fill{.id = 0, .step = step, .chunks = {{s, 0, context - 1, false}}};
        Activations a{.host = random_rows(context - 1)};
        stage->compute(fill, ctx, a);
        stage->commit(step++, slots);
      }
      for (int32_t b : {1, 2, 4, 8}) {
        MicroBatch mb{.id = 0, .step = step, .chunks = {}};
        for (int32_t s = 0; s < b; ++s)
          mb.chunks.push_back({s, context - 1, context, true});
        const std::vector<float> input = random_rows(b);
        Activations a;
        const double t = time_median(reps * 3, [&] {
          a.host = input;
          stage->compute(mb, ctx, a);
          stage->rollback(slots);
        });
        const Workload w = Workload::of(mb, Phase::kDecode);
        p.samples.push_back(
            {UnitKind::kDecoderLayer, Phase::kDecode, w.n_tokens, w.attention_pairs, t});
      }
    }
  }
  // Embedding alone (a stage of zero layers).
  {
    auto stage = make_stage({.first_layer = 0, .last_layer = 0, .embedding = true});
    for (int64_t t : {1, 8, 64, 512}) {
      if (t > max_context) continue;
      MicroBatch mb{.id = 0, .step = step, .chunks = {{0, 0, t, true}}};
      Activations a;
      const double s = time_median(reps * 3, [&] {
        stage->compute(mb, ctx, a);
        stage->rollback(slots);
      });
      p.samples.push_back({UnitKind::kEmbedding, Phase::kPrefill, t, 0, s});
      p.samples.push_back({UnitKind::kEmbedding, Phase::kDecode, t, 0, s});
    }
  }
  // Final norm + lm_head + sampling over `rows` sampled rows.
  {
    auto stage = make_stage({.first_layer = 0, .last_layer = 0, .head = true});
    for (int32_t rows : {1, 2, 4, 8}) {
      MicroBatch mb{.id = 0, .step = step, .chunks = {}};
      for (int32_t s = 0; s < rows; ++s)
        mb.chunks.push_back({s, 0, 1, true});
      const Activations a{.host = random_rows(rows)};
      std::vector<SampledToken> out;
      std::vector<LogitsRow> logits;
      const double t = time_median(reps * 3, [&] {
        out.clear();
        stage->sample(mb, ctx, a, out, logits);
      });
      p.samples.push_back({UnitKind::kHead, Phase::kPrefill, rows, 0, t});
      p.samples.push_back({UnitKind::kHead, Phase::kDecode, rows, 0, t});
    }
  }
  // Shared host (CPU stages are threads on the same cores): one layer's prefill alone vs with a
  // concurrent copy on another thread. Stages on a GPU each have their own device time.
  if (backend == BackendKind::kCpu) {
    std::vector<std::unique_ptr<StageBackend>> stages;
    stages.push_back(make_stage({.first_layer = 0, .last_layer = 1}));
    stages.push_back(make_stage({.first_layer = 0, .last_layer = 1}));
    const int64_t t = std::min<int64_t>(256, max_context);
    MicroBatch mb{.id = 0, .step = step, .chunks = {{0, 0, t, true}}};
    const std::vector<float> input = random_rows(t);
    auto timed = [&](StageBackend& stage, int n) {
      std::vector<double> times;
      Activations a;
      for (int i = 0; i < n; ++i) {
        a.host = input;
        const auto start = Clock::now();
        stage.compute(mb, ctx, a);
        times.push_back(seconds_since(start));
        stage.rollback(slots);
      }
      return median(times);
    };
    timed(*stages[0], 1);
    const double alone = timed(*stages[0], reps + 2);
    double other = 0.0;
    std::thread co([&] { other = timed(*stages[1], reps + 2); });
    const double together = timed(*stages[0], reps + 2);
    co.join();
    const double hw = std::max(1u, std::thread::hardware_concurrency());
    p.host_cores = std::min(hw, 2.0 * alone / std::max(0.5 * (together + other), 1e-12));
  }
  // Host link: half a round trip between two threads (the wake-up dominates; buffers move).
  {
    HostLink there(2), back(2);
    constexpr int kTrips = 2000;
    std::thread echo([&] {
      for (int i = 0; i < kTrips; ++i)
        back.send(there.recv(std::chrono::milliseconds(10000)), std::chrono::milliseconds(10000));
    });
    const auto start = Clock::now();
    for (int i = 0; i < kTrips; ++i) {
      there.send(LinkMessage{0, 0, {}}, std::chrono::milliseconds(10000));
      back.recv(std::chrono::milliseconds(10000));
    }
    const double rtt = seconds_since(start) / kTrips;
    echo.join();
    p.link_latency_s = rtt / 2;
    p.link_s_per_byte = 0.0;
    // Waking every worker and waiting for the last one: about one round trip.
    p.step_overhead_s = rtt;
  }
  p.fit();
  return p;
}

}  // namespace conveyor
