// Profile: per-unit times measured on one machine (conveyor-bench --profile), fitted by least
// squares, with a JSON form; DeviceSpec uses one instead of its roofline rates.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/model_config.hpp"
#include "conveyor/workload.hpp"

namespace conveyor {

// Least-squares fit t = base + per_token * x + per_pair * y (seconds), where x counts rows
// (tokens, sequences or head rows) and y attention pairs.
struct TimeFit {
  double base_s = 0.0;
  double per_token_s = 0.0;
  double per_pair_s = 0.0;

  double at(double x, double y = 0.0) const { return base_s + per_token_s * x + per_pair_s * y; }
  bool operator==(const TimeFit&) const = default;
};

// One timed pass of a unit during profiling.
struct ProfileSample {
  UnitKind unit = UnitKind::kDecoderLayer;
  Phase phase = Phase::kPrefill;
  int64_t x = 0;  // tokens (prefill), sequences (decode), rows (head)
  int64_t y = 0;  // attention pairs
  double seconds = 0.0;
};

// Per-unit times measured on one machine (conveyor-bench --profile writes it as JSON). All
// decoder layers of a model share one shape, so one fit covers them.
struct Profile {
  std::string device;       // free text, e.g. "cpu, 1 thread per stage"
  std::string model_shape;  // model_shape_key() of the profiled model
  TimeFit embedding_prefill, layer_prefill, head_prefill;
  TimeFit embedding_decode, layer_decode, head_decode;
  double link_latency_s = 0.0;   // one message handed from stage s to s+1
  double link_s_per_byte = 0.0;  // 0 for a host link that moves buffers
  double step_overhead_s = 0.0;  // per engine step: waking the workers, the commit barrier
  // Cores the stages of one host effectively share (measured: 2 x the time of one unit alone /
  // its time with a concurrent copy); 0 when not measured (each stage its own device).
  double host_cores = 0.0;
  std::vector<ProfileSample> samples;

  // Fits every TimeFit from `samples` (the head and embedding on rows only).
  void fit();
  const TimeFit& fit_for(UnitKind unit, Phase phase) const;

  std::string to_json() const;
  // Throws conveyor::Error(kModelFormat) naming `origin` and the field on malformed input.
  static Profile from_json(std::string_view text, std::string_view origin = "profile");
  static Profile load(const std::filesystem::path& path);
  void save(const std::filesystem::path& path) const;
};

// "h768-i2048-l12-q12-kv4-d64-v32000": the fields that change unit times.
std::string model_shape_key(const ModelConfig& config);

// "h768-i2048-l12-q12-kv4-d64-v32000": the fields that change unit times.
std::string model_shape_key(const ModelConfig& config);

}  // namespace conveyor
