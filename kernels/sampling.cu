// Token choice on the device: greedy argmax and temperature / top-k / top-p sampling with the
// (seed, position) -> uniform draw of the CPU sampler (core/random_bits.hpp), one block per row.
#include <cmath>

#include "core/random_bits.hpp"
#include "kernels/common.cuh"

namespace conveyor::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 4;
constexpr int kBuckets = 1 << kDigitBits;

// ---- argmax ----------------------------------------------------------------------------------

// (value, id) better than (best_value, best_id): NaN never wins, ties go to the lowest id,
// id < 0 is "none yet".
__device__ __forceinline__ bool better(float value, int id, float best_value, int best_id) {
  if (id < 0 || isnan(value)) return false;
  if (best_id < 0) return true;
  return value > best_value || (value == best_value && id < best_id);
}

// Block-wide argmax of row x (every thread gets the result). scratch: kWarps floats + ints.
__device__ void block_argmax(const float* __restrict__ x, int vocab, float* s_value, int* s_id,
                             float& out_value, int& out_id) {
  float best_value = 0.0f;
  int best_id = -1;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    if (better(x[i], i, best_value, best_id)) {
      best_value = x[i];
      best_id = i;
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float v = __shfl_xor_sync(0xffffffffu, best_value, offset);
    const int id = __shfl_xor_sync(0xffffffffu, best_id, offset);
    if (better(v, id, best_value, best_id)) {
      best_value = v;
      best_id = id;
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) {
    s_value[warp] = best_value;
    s_id[warp] = best_id;
  }
  __syncthreads();
  best_value = 0.0f;
  best_id = -1;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
    if (better(s_value[w], s_id[w], best_value, best_id)) {
      best_value = s_value[w];
      best_id = s_id[w];
    }
  }
  out_value = best_value;
  out_id = best_id;
}

// ---- radix descent over (logit, id) keys -----------------------------------------------------

// A total order of the candidates as the CPU sorts them: larger logit first, then lower id.
// The high 32 bits map the float monotonically to unsigned; the low 32 bits are ~id.
__device__ __forceinline__ uint64_t order_key(float logit, int id) {
  // -0 and +0 compare equal on the CPU (their order is by id): give them one key.
  uint32_t bits = logit == 0.0f ? 0u : __float_as_uint(logit);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(bits) << 32) | static_cast<uint64_t>(~static_cast<uint32_t>(id));
}

struct Row {
  const float* x;  // [vocab]
  int vocab;
  double max_logit;    // of the non-NaN logits
  double temperature;  // > 0
};

// Unnormalized probability of logit x as the CPU computes it: exp((x - max) / temperature).
__device__ __forceinline__ double mass_of(const Row& row, float x) {
  return exp((static_cast<double>(x) - row.max_logit) / row.temperature);
}

struct Scratch {
  double mass[kWarps][kBuckets];
  int count[kWarps][kBuckets];
  double total_mass[kBuckets];
  int total_count[kBuckets];
  double sum[kWarps];
  float argmax_value[kWarps];
  int argmax_id[kWarps];
};

// Walks the candidates (non-NaN, key >= threshold) in descending key order, accumulating their
// weight (1 each in count mode, else their mass), and returns the key of the first candidate
// at which the running total reaches `target` (>= target, or > target when `strict`); the last
// candidate when none does. Found digit by digit (kDigitBits at a time, most significant
// first): per digit, a histogram of the weight of the candidates under the current prefix,
// reduced in a fixed order so every run and every thread agrees.
__device__ uint64_t find_crossing(const Row& row, uint64_t threshold, bool count_mode,
                                  double target, bool strict, Scratch& s) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint64_t prefix = 0, mask = 0;
  double above = 0.0;  // weight of the candidates with keys above the current prefix
  for (int shift = 64 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    double mass[kBuckets];
    int count[kBuckets];
#pragma unroll
    for (int b = 0; b < kBuckets; ++b) {
      mass[b] = 0.0;
      count[b] = 0;
    }
    for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      const float x = row.x[i];
      if (isnan(x)) continue;
      const uint64_t key = order_key(x, i);
      if (key < threshold || (key & mask) != prefix) continue;
      const int digit = static_cast<int>((key >> shift) & (kBuckets - 1));
      mass[digit] += count_mode ? 1.0 : mass_of(row, x);
      count[digit] += 1;
    }
#pragma unroll
    for (int b = 0; b < kBuckets; ++b) {
      double m = mass[b];
      int c = count[b];
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        m += __shfl_xor_sync(0xffffffffu, m, offset);
        c += __shfl_xor_sync(0xffffffffu, c, offset);
      }
      if (lane == 0) {
        s.mass[warp][b] = m;
        s.count[warp][b] = c;
      }
    }
    __syncthreads();
    if (threadIdx.x < kBuckets) {
      double m = 0.0;
      int c = 0;
      for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
        m += s.mass[w][threadIdx.x];
        c += s.count[w][threadIdx.x];
      }
      s.total_mass[threadIdx.x] = m;
      s.total_count[threadIdx.x] = c;
    }
    __syncthreads();
    // Every thread scans the 16 totals identically.
    int chosen = -1, lowest = -1;
    double run = above, above_lowest = above;
    for (int b = kBuckets - 1; b >= 0; --b) {
      if (s.total_count[b] == 0) continue;
      const double next = run + s.total_mass[b];
      if (strict ? next > target : next >= target) {
        chosen = b;
        break;
      }
      lowest = b;
      above_lowest = run;
      run = next;
    }
    if (chosen < 0) {  // no crossing (rounding, or fewer candidates than the target count)
      chosen = lowest;
      above = above_lowest;
    } else {
      above = run;
    }
    prefix |= static_cast<uint64_t>(chosen) << shift;
    mask |= static_cast<uint64_t>(kBuckets - 1) << shift;
    __syncthreads();  // the totals are rewritten by the next digit
  }
  return prefix;
}

// Sum of the masses of the candidates with key >= threshold, in a fixed order.
__device__ double kept_mass(const Row& row, uint64_t threshold, Scratch& s) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
    const float x = row.x[i];
    if (!isnan(x) && order_key(x, i) >= threshold) sum += mass_of(row, x);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) s.sum[warp] = sum;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
    total += s.sum[w];
  return total;
}

}  // namespace

// grid (n_rows), block 1024.
__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const float* __restrict__ logits,  // [n_rows, vocab]
                  int32_t* __restrict__ tokens,      // [n_rows]
                  int vocab) {
  __shared__ float s_value[kWarps];
  __shared__ int s_id[kWarps];
  float value;
  int id;
  block_argmax(logits + static_cast<int64_t>(blockIdx.x) * vocab, vocab, s_value, s_id, value, id);
  if (threadIdx.x == 0) tokens[blockIdx.x] = id;
}

// grid (n_rows), block 1024: the choice of conveyor::sample_token for each row.
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const float* __restrict__ logits,            // [n_rows, vocab]
                  const SampleRowParams* __restrict__ params,  // [n_rows]
                  int32_t* __restrict__ tokens,                // [n_rows]
                  int vocab) {
  __shared__ Scratch s;
  const SampleRowParams p = params[blockIdx.x];
  const float* x = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float max_value;
  int max_id;
  block_argmax(x, vocab, s.argmax_value, s.argmax_id, max_value, max_id);
  if (p.temperature == 0.0 || max_id < 0) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = max_id;
    return;
  }
  const Row row{x, vocab, static_cast<double>(max_value), p.temperature};

  // Top-k: the candidates are the keys >= the key of the k-th most likely token.
  uint64_t threshold = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    threshold = find_crossing(row, 0, /*count_mode=*/true, static_cast<double>(p.top_k),
                              /*strict=*/false, s);
  }
  double total = kept_mass(row, threshold, s);
  // Top-p: the smallest prefix of the candidates whose mass reaches top_p of the total.
  if (p.top_p < 1.0) {
    threshold = find_crossing(row, threshold, /*count_mode=*/false, p.top_p * total,
                              /*strict=*/false, s);
    total = kept_mass(row, threshold, s);
  }
  const double target = sampling_uniform(p.seed, p.position) * total;
  const uint64_t chosen = find_crossing(row, threshold, /*count_mode=*/false, target,
                                        /*strict=*/true, s);
  if (threadIdx.x == 0) {
    tokens[blockIdx.x] = static_cast<int32_t>(~static_cast<uint32_t>(chosen & 0xffffffffu));
  }
}

// Shared checks of the row-wise launchers over [n_rows, vocab] fp32 logits; false: no rows.
static bool check_logit_rows(const char* op, int64_t n_rows, int64_t vocab, const float* logits,
                             const int32_t* tokens) {
  require_non_negative(n_rows, op, "n_rows");
  require_positive(vocab, op, "vocab");
  if (vocab > INT32_MAX) invalid_argument(op, "vocab is ", vocab, " but token ids are int32");
  if (n_rows > INT32_MAX) invalid_argument(op, "n_rows is ", n_rows, " but at most 2^31-1");
  if (n_rows == 0) return false;
  require_pointer(logits, op, "logits");
  require_pointer(tokens, op, "tokens");
  return true;
}

void launch_argmax(const ArgmaxArgs& a, cudaStream_t stream) {
  const char* op = "launch_argmax";
  if (!check_logit_rows(op, a.n_rows, a.vocab, a.logits, a.tokens)) return;
  argmax_kernel<<<grid_dim(a.n_rows, 1), kThreads, 0, stream>>>(a.logits, a.tokens,
                                                                static_cast<int>(a.vocab));
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

void launch_sample(const SampleArgs& a, cudaStream_t stream) {
  const char* op = "launch_sample";
  if (!check_logit_rows(op, a.n_rows, a.vocab, a.logits, a.tokens)) return;
  require_pointer(a.params, op, "params");
  sample_kernel<<<grid_dim(a.n_rows, 1), kThreads, 0, stream>>>(a.logits, a.params, a.tokens,
                                                                static_cast<int>(a.vocab));
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
