// Host sampling of one token from one row of logits (greedy, temperature, top-k, top-p).
#pragma once

#include <cstdint>
#include <span>

#include "conveyor/sampling.hpp"

namespace conveyor {

// Index of the largest logit; ties go to the lowest id. NaN logits are never chosen.
int32_t argmax(std::span<const float> logits);

// Samples the token that follows `position` (the position of the last token whose logits these
// are). Deterministic in (params.seed, position).
int32_t sample_token(std::span<const float> logits, const SamplingParams& params, int64_t position);

}  // namespace conveyor
