// Rotary position embedding frequencies of a model: inv_freq per rotated pair, with the
// rope_scaling of config.json (linear, llama3) applied.
#pragma once

#include <vector>

#include "conveyor/model_config.hpp"

namespace conveyor {

// inv_freq[i] = 1 / rope_theta^(2i / head_dim) for i < head_dim / 2, computed in double, then
// scaled: linear divides every frequency by factor; llama3 divides the low frequencies (long
// wavelengths) by factor, keeps the high ones and blends in between, as Hugging Face's
// _compute_llama3_parameters does. Returns [head_dim / 2]. Throws kInvalidArgument for an odd or
// non-positive head_dim, a non-positive theta or factor, or llama3 factors with high <= low.
std::vector<float> rope_inv_freq(const ModelConfig& config);

}  // namespace conveyor
