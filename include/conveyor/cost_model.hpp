// CostModel: FLOPs, bytes and predicted seconds of every layer unit (embedding, decoder layers,
// final norm + lm_head) for one pass, from device rates (presets) or a measured Profile.
#pragma once

#include <cstdint>

#include "conveyor/dtype.hpp"
#include "conveyor/hardware.hpp"
#include "conveyor/model_config.hpp"
#include "conveyor/profile.hpp"
#include "conveyor/workload.hpp"

namespace conveyor {

// Counts of one unit for one workload. Bytes are at the cost model's dtypes.
struct UnitCost {
  double flops = 0.0;
  double bytes_moved = 0.0;        // memory traffic: weights read + KV read/written + rows
  int64_t weight_bytes = 0;        // resident weights of the unit
  int64_t kv_bytes_per_token = 0;  // K + V of one cached position (decoder layers only)
  int64_t activation_bytes = 0;    // what a stage ending after this unit sends on
};

// The units one stage holds: `n_layers` decoder layers, plus the embedding and / or the head.
struct StageUnits {
  int64_t n_layers = 0;
  bool embedding = false;
  bool head = false;
};

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
  // Seconds of a stage holding `units` for one pass of `work`.
  double stage_seconds(const StageUnits& units, const Workload& work,
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
