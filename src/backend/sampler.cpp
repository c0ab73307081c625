// Sampling: greedy argmax, and temperature / top-k / top-p with a counter-based random draw.
#include "backend/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/check.hpp"
#include "core/random_bits.hpp"

namespace conveyor {

void SamplingParams::validate() const {
  if (!(temperature >= 0.0) || !std::isfinite(temperature)) {
    fail(ErrorCode::kInvalidArgument,
         "temperature is {} but must be a finite number >= 0 (0 means greedy)", temperature);
  }
  if (top_k < 0) {
    fail(ErrorCode::kInvalidArgument, "top_k is {} but must be >= 0 (0 turns it off)", top_k);
  }
  if (!(top_p > 0.0 && top_p <= 1.0)) {
    fail(ErrorCode::kInvalidArgument, "top_p is {} but must be in (0, 1] (1 turns it off)", top_p);
  }
}

int32_t argmax(std::span<const float> logits) {
  int32_t best = -1;
  float best_value = 0.0f;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (best < 0 || v > best_value) {
      best = static_cast<int32_t>(i);
      best_value = v;
    }
  }
  if (best < 0) {
    fail(ErrorCode::kInternal, "every one of the {} logits is NaN; the model produced no number",
         logits.size());
  }
  return best;
}

int32_t sample_token(std::span<const float> logits, const SamplingParams& params,
                     int64_t position) {
  if (params.greedy()) return argmax(logits);
  const int64_t vocab = static_cast<int64_t>(logits.size());

  // Candidates sorted by logit, descending; ties by lowest id so the order is total.
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [&](int32_t a, int32_t b) {
    const float la = logits[static_cast<size_t>(a)], lb = logits[static_cast<size_t>(b)];
    if (std::isnan(la) != std::isnan(lb)) return std::isnan(lb);
    return la > lb || (la == lb && a < b);
  };
  const int64_t keep = params.top_k > 0 ? std::min(params.top_k, vocab) : vocab;
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), more_likely);
  order.resize(static_cast<size_t>(keep));

  // Softmax over the kept candidates at the given temperature (in double, max-subtracted).
  const double max_logit = logits[static_cast<size_t>(order[0])];
  std::vector<double> probs(order.size());
  double total = 0.0;
  for (size_t i = 0; i < order.size(); ++i) {
    const float l = logits[static_cast<size_t>(order[i])];
    probs[i] = std::isnan(l) ? 0.0 : std::exp((l - max_logit) / params.temperature);
    total += probs[i];
  }
  // Top-p: smallest prefix whose mass reaches top_p (at least one token).
  size_t n_kept = probs.size();
  if (params.top_p < 1.0) {
    double mass = 0.0;
    for (size_t i = 0; i < probs.size(); ++i) {
      mass += probs[i] / total;
      if (mass >= params.top_p) {
        n_kept = i + 1;
        break;
      }
    }
    total = std::accumulate(probs.begin(), probs.begin() + static_cast<ptrdiff_t>(n_kept), 0.0);
  }
  const double target = sampling_uniform(params.seed, position) * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < n_kept; ++i) {
    cumulative += probs[i];
    if (target < cumulative) return order[i];
  }
  return order[n_kept - 1];
}

}  // namespace conveyor
