// rope_inv_freq: rotary frequencies with linear and llama3 rope_scaling.
#include "model/rope.hpp"

#include <cmath>
#include <numbers>

#include "core/check.hpp"

namespace conveyor {
namespace {

// llama3: frequencies whose wavelength exceeds the original context / low_freq_factor are
// stretched by `factor`, those shorter than original context / high_freq_factor are kept, and
// the band between is a linear blend in original_context / wavelength.
double llama3_scale(double inv_freq, const RopeScaling& s) {
  const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_ctx / s.low_freq_factor;
  const double high_freq_wavelen = old_ctx / s.high_freq_factor;
  const double wavelen = 2.0 * std::numbers::pi / inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / s.factor;
  if (wavelen < high_freq_wavelen) return inv_freq;
  const double smooth =
      (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq;
}

}  // namespace

std::vector<float> rope_inv_freq(const ModelConfig& config) {
  const int64_t head_dim = config.head_dim;
  if (head_dim <= 0 || head_dim % 2 != 0) {
    fail(ErrorCode::kInvalidArgument,
         "rotary embedding needs a positive even head_dim but head_dim is {}; fix the model config",
         head_dim);
  }
  if (!(config.rope_theta > 0.0)) {
    fail(ErrorCode::kInvalidArgument, "rope_theta must be positive but is {}; fix the model config",
         config.rope_theta);
  }
  const RopeScaling& scaling = config.rope_scaling;
  if ((scaling.type == RopeScalingType::kLinear || scaling.type == RopeScalingType::kLlama3) &&
      !(scaling.factor > 0.0)) {
    fail(ErrorCode::kInvalidArgument,
         "rope_scaling.factor must be positive but is {}; fix the model config", scaling.factor);
  }
  if (scaling.type == RopeScalingType::kLlama3) {
    if (!(scaling.low_freq_factor > 0.0) || !(scaling.high_freq_factor > scaling.low_freq_factor) ||
        scaling.original_max_position_embeddings <= 0) {
      fail(ErrorCode::kInvalidArgument,
           "llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and a positive "
           "original_max_position_embeddings, but they are {}, {} and {}; fix the model config",
           scaling.low_freq_factor, scaling.high_freq_factor,
           scaling.original_max_position_embeddings);
    }
  }

  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(config.rope_theta,
                              static_cast<double>(2 * i) / static_cast<double>(head_dim));
    switch (scaling.type) {
      case RopeScalingType::kNone:
        break;
      case RopeScalingType::kLinear:
        f /= scaling.factor;
        break;
      case RopeScalingType::kLlama3:
        f = llama3_scale(f, scaling);
        break;
      case RopeScalingType::kFrequencyFactors:
        if (static_cast<int64_t>(scaling.frequency_factors.size()) != half) {
          fail(ErrorCode::kInvalidArgument,
               "rope frequency factors hold {} values but head_dim {} rotates {} pairs; fix the "
               "model",
               scaling.frequency_factors.size(), head_dim, half);
        }
        f /= scaling.frequency_factors[static_cast<size_t>(i)];
        break;
    }
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv_freq;
}

}  // namespace conveyor
