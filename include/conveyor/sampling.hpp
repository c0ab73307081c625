// SamplingParams: how the next token is chosen from the logits of one sequence.
#pragma once

#include <cstdint>

namespace conveyor {

// Order of application: temperature, then top-k, then top-p (as Hugging Face does).
// temperature == 0 is greedy decoding (ties go to the lowest token id). Draws are keyed by
// (seed, position), so a request produces the same tokens however it is batched or pipelined.
struct SamplingParams {
  double temperature = 0.0;  // >= 0; 0 = greedy
  int64_t top_k = 0;         // 0 = off; otherwise keep the k most likely tokens
  double top_p = 1.0;        // (0, 1]; 1 = off; keep the smallest set with mass >= top_p
  uint64_t seed = 0;

  bool greedy() const { return temperature == 0.0; }
  // Throws conveyor::Error(kInvalidArgument) naming the field, value and allowed range.
  void validate() const;
};

// Which logits rows of a request come back with its tokens.
enum class LogitsCapture : uint8_t {
  kNone,
  kSampled,  // the row each generated token was sampled from
  kAll,      // ... and first one row per prompt position
};

}  // namespace conveyor
