// measure_profile: per-unit times of a model measured on this machine's backend (the Profile
// that DeviceSpec and the cost model predict with; conveyor-bench --profile).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include "conveyor/engine.hpp"
#include "conveyor/profile.hpp"

namespace conveyor {

struct ProfilerOptions {
  // The backend measured: cpu with its threads per stage, or cuda on cuda_devices.front()
  // (device 0 when empty) at `dtype`.
  DeviceOptions device;
  int repeats = 3;  // median of this many timed passes after a warm-up
  // The longest context profiled (capped by the model's max_position_embeddings).
  int64_t max_context = 2048;
  // Random weights (EngineOptions::random_weights_seed): `model` may be a bare config.json.
  std::optional<uint64_t> random_weights_seed;
};

// Times one decoder layer (prefill over token counts and pasts, decode over batch sizes and
// contexts), the embedding and the head on single stages built like the Engine's (any
// StageBackend: CPU or CUDA; each pass ends with a rollback, which waits for the device), the
// host link's latency, and — on the CPU — how much two stages slow each other on shared cores;
// then fits the TimeFits. Throws what Engine::open throws for a model it cannot open.
Profile measure_profile(const std::filesystem::path& model, const ProfilerOptions& options);

}  // namespace conveyor
