// CostModel: per-unit FLOPs and bytes, and predicted seconds from a roofline over a device's
// rates or from its measured Profile.
#include "conveyor/cost_model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/check.hpp"

namespace conveyor {
namespace {

int64_t bytes_of(DType dtype) {
  return static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace

CostModel::CostModel(ModelConfig config, const CostModelOptions& options)
    : config_(std::move(config)), options_(options) {
  config_.validate();
}

int64_t CostModel::layer_weight_bytes() const {
  return config_.layer_params() * bytes_of(options_.weight_dtype);
}

int64_t CostModel::embedding_weight_bytes() const {
  return config_.vocab_size * config_.hidden_size * bytes_of(options_.weight_dtype);
}

int64_t CostModel::head_weight_bytes() const {
  return (config_.vocab_size * config_.hidden_size + config_.hidden_size) *
         bytes_of(options_.weight_dtype);
}

int64_t CostModel::kv_bytes_per_token_per_layer() const {
  return 2 * config_.kv_dim() * bytes_of(options_.kv_dtype);
}

int64_t CostModel::activation_bytes(const Workload& work) const {
  return work.n_tokens * config_.hidden_size * bytes_of(options_.activation_dtype);
}

UnitCost CostModel::cost(UnitKind unit, const Workload& work) const {
  const ModelConfig& c = config_;
  const double act = static_cast<double>(bytes_of(options_.activation_dtype));
  const double n = static_cast<double>(work.n_tokens);
  UnitCost out;
  out.activation_bytes = activation_bytes(work);
  switch (unit) {
    case UnitKind::kEmbedding:
      out.weight_bytes = embedding_weight_bytes();
      out.flops = 0.0;
      out.bytes_moved = n * static_cast<double>(c.hidden_size) *
                        (static_cast<double>(bytes_of(options_.weight_dtype)) + act);
      break;
    case UnitKind::kDecoderLayer: {
      const double matmul_params =
          static_cast<double>(c.hidden_size * (c.q_dim() + 2 * c.kv_dim()) +
                              c.q_dim() * c.hidden_size + 3 * c.hidden_size * c.intermediate_size);
      out.weight_bytes = layer_weight_bytes();
      out.kv_bytes_per_token = kv_bytes_per_token_per_layer();
      out.flops = 2.0 * n * matmul_params +
                  4.0 * static_cast<double>(c.q_dim()) * static_cast<double>(work.attention_pairs);
      const double rows = n * static_cast<double>(2 * c.hidden_size + c.q_dim() + 2 * c.kv_dim() +
                                                  3 * c.intermediate_size);
      out.bytes_moved = static_cast<double>(out.weight_bytes) +
                        static_cast<double>(work.kv_tokens_read + work.n_tokens) *
                            static_cast<double>(out.kv_bytes_per_token) +
                        rows * act;
      break;
    }
    case UnitKind::kHead: {
      const double rows = static_cast<double>(work.n_head_rows);
      out.weight_bytes = head_weight_bytes();
      out.flops = 2.0 * rows * static_cast<double>(c.hidden_size * c.vocab_size) +
                  4.0 * rows * static_cast<double>(c.hidden_size);
      out.bytes_moved = static_cast<double>(out.weight_bytes) +
                        rows * static_cast<double>(c.vocab_size) * 4.0 +
                        rows * static_cast<double>(c.hidden_size) * act;
      break;
    }
  }
  return out;
}

void CostModel::check_profile(const Profile& profile) const {
  const std::string key = model_shape_key(config_);
  // The layer count may differ (one layer's time does not depend on how many there are).
  auto strip_layers = [](const std::string& k) {
    const size_t l = k.find("-l");
    const size_t next = k.find('-', l + 1);
    return l == std::string::npos || next == std::string::npos ? k
                                                               : k.substr(0, l) + k.substr(next);
  };
  if (strip_layers(profile.model_shape) != strip_layers(key)) {
    fail(ErrorCode::kInvalidArgument,
         "profile was measured on a model of shape {} but this model is {}; profile this model "
         "with conveyor-bench --profile, or use device rates",
         profile.model_shape, key);
  }
}

double CostModel::seconds(UnitKind unit, const Workload& work, const DeviceSpec& device) const {
  if (device.profile) {
    const TimeFit& f = device.profile->fit_for(unit, work.phase);
    double t = 0.0;
    switch (unit) {
      case UnitKind::kEmbedding:
        t = f.at(static_cast<double>(work.n_tokens));
        break;
      case UnitKind::kDecoderLayer:
        t = f.at(static_cast<double>(work.n_tokens), static_cast<double>(work.attention_pairs));
        break;
      case UnitKind::kHead:
        if (work.n_head_rows == 0) return 0.0;
        t = f.at(static_cast<double>(work.n_head_rows));
        break;
    }
    return std::max(t, 0.0);
  }
  if (unit == UnitKind::kHead && work.n_head_rows == 0) return 0.0;
  const UnitCost c = cost(unit, work);
  const double compute = c.flops / (device.peak_flops * device.flops_efficiency);
  const double memory = c.bytes_moved / (device.memory_bandwidth * device.bandwidth_efficiency);
  return std::max(compute, memory) + device.unit_overhead_s;
}

double CostModel::stage_seconds(const StageUnits& units, const Workload& work,
                                const DeviceSpec& device) const {
  double t = static_cast<double>(units.n_layers) * seconds(UnitKind::kDecoderLayer, work, device);
  if (units.embedding) t += seconds(UnitKind::kEmbedding, work, device);
  if (units.head) t += seconds(UnitKind::kHead, work, device);
  return t;
}

double CostModel::send_seconds(const Workload& work, const LinkSpec& link,
                               const DeviceSpec& device) const {
  const int64_t bytes = activation_bytes(work);
  if (device.profile) {
    return device.profile->link_latency_s +
           device.profile->link_s_per_byte * static_cast<double>(bytes);
  }
  return link.seconds(bytes);
}

}  // namespace conveyor
