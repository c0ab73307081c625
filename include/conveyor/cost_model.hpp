// CostModel: FLOPs, bytes and predicted seconds of every layer unit (embedding, decoder layers,
// final norm + lm_head) for one pass, from device rates (presets) or a measured Profile.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"
#include "conveyor/step_plan.hpp"

namespace conveyor {

// The units a partition distributes. The embedding always runs on stage 0 and the head (final
// norm + lm_head) on the last stage; decoder layers are what the partitioner moves.
enum class UnitKind { kEmbedding, kDecoderLayer, kHead };

std::string_view to_string(UnitKind kind);

// The work of one pass through a unit: a prefill micro-batch or a decode micro-batch.
struct Workload {
  Phase phase = Phase::kPrefill;
  int64_t n_tokens = 0;         // rows flowing through the decoder layers
  int64_t attention_pairs = 0;  // sum over rows of the positions each row attends to
  int64_t kv_tokens_read = 0;   // cached K/V positions each layer reads (per layer)
  int64_t n_head_rows = 0;      // rows the head projects to logits (sampled rows)

  // n_seqs sequences of tokens_per_seq new tokens each after `past` committed positions; one
  // sampled row per sequence (all_logits: every row).
  static Workload prefill(int64_t tokens_per_seq, int64_t n_seqs = 1, int64_t past = 0,
                          bool all_logits = false);
  // n_seqs sequences, one new token each, attending to `context` positions (including the new
  // one).
  static Workload decode(int64_t n_seqs, int64_t context);
  // The work of micro-batch `mb` of a plan in `phase` (chunks may have different pasts).
  static Workload of(const MicroBatch& mb, Phase phase, bool all_logits = false);
};

// Counts of one unit for one workload. Bytes are at the cost model's dtypes.
struct UnitCost {
  double flops = 0.0;
  double bytes_moved = 0.0;        // memory traffic: weights read + KV read/written + rows
  int64_t weight_bytes = 0;        // resident weights of the unit
  int64_t kv_bytes_per_token = 0;  // K + V of one cached position (decoder layers only)
  int64_t activation_bytes = 0;    // what a stage ending after this unit sends on
};

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

// One pipeline device. Times are a roofline: max(flops / (peak * flops_efficiency),
// bytes / (bandwidth * bandwidth_efficiency)) + unit_overhead_s, unless `profile` is set, in
// which case its fits are used (the profile must come from a model of the same shape).
struct DeviceSpec {
  std::string name = "device";
  double peak_flops = 0.0;        // FLOP/s at the compute dtype (dense)
  double memory_bandwidth = 0.0;  // bytes/s
  int64_t memory_bytes = 0;       // capacity available to one stage
  double flops_efficiency = 1.0;  // achievable fraction of peak, (0, 1]
  double bandwidth_efficiency = 1.0;
  double unit_overhead_s = 0.0;  // launch / dispatch cost per unit pass
  std::optional<Profile> profile;

  void validate() const;
};

// The link from stage s to s+1: a message of b bytes takes latency_s + b / bandwidth.
struct LinkSpec {
  std::string name = "link";
  double bandwidth = 0.0;  // bytes/s; 0 = moves a pointer (host link), no per-byte cost
  double latency_s = 0.0;

  double seconds(int64_t bytes) const;
  void validate() const;
};

// Presets: "cpu" (this 2-core machine's fp32 backend, one thread per stage), "h100" (SXM, 80 GB),
// "h100-pcie", "h200" (141 GB), "a100" (SXM, 80 GB), "a100-40gb". Throws
// conveyor::Error(kInvalidArgument) listing the presets for any other name.
DeviceSpec device_preset(std::string_view name);
std::vector<std::string> device_preset_names();
// Presets: "host" (threads in one process), "nvlink" (NVLink 4), "pcie4", "pcie5",
// "infiniband" (NDR 400 Gb/s). Throws kInvalidArgument listing the presets otherwise.
LinkSpec link_preset(std::string_view name);
std::vector<std::string> link_preset_names();

struct CostModelOptions {
  DType weight_dtype = DType::kBF16;      // bytes per parameter held and read
  DType kv_dtype = DType::kBF16;          // bytes per cached K/V element
  DType activation_dtype = DType::kBF16;  // bytes per activation element sent between stages
};

// Thread safety: immutable after construction; every method is const and safe to share.
class CostModel {
 public:
  explicit CostModel(ModelConfig config, const CostModelOptions& options = {});

  const ModelConfig& config() const { return config_; }
  const CostModelOptions& options() const { return options_; }
  int64_t n_layers() const { return config_.n_layers; }

  UnitCost cost(UnitKind unit, const Workload& work) const;
  // Predicted seconds of one pass of `unit` on `device` (roofline or the device's profile).
  double seconds(UnitKind unit, const Workload& work, const DeviceSpec& device) const;
  // Seconds of a stage with decoder layers [first, last) (plus the embedding / head when it
  // has them) for one pass; the head counts only when `with_head`.
  double stage_seconds(int64_t n_layers, bool with_embedding, bool with_head, const Workload& work,
                       const DeviceSpec& device) const;
  // Bytes sent from one stage to the next for `work` (n_tokens x hidden activations).
  int64_t activation_bytes(const Workload& work) const;
  // Seconds to send `work`'s activations over `link`; from the profile when `device` has one.
  double send_seconds(const Workload& work, const LinkSpec& link, const DeviceSpec& device) const;

  int64_t layer_weight_bytes() const;
  int64_t embedding_weight_bytes() const;
  int64_t head_weight_bytes() const;  // final norm + lm_head (a copy even when tied)
  int64_t kv_bytes_per_token_per_layer() const;

  // Throws conveyor::Error(kInvalidArgument) when `profile` was measured on a model of another
  // shape, naming both shapes.
  void check_profile(const Profile& profile) const;

 private:
  ModelConfig config_;
  CostModelOptions options_;
};

}  // namespace conveyor
