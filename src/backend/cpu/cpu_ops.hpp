// fp32 CPU operators of a Llama-family decoder: the reference every other backend is tested
// against. GEMMs go to OpenBLAS (single-threaded per call, sliced over our own ThreadPool so
// every pipeline stage has its own thread budget); the rest is plain C++ over the pool.
#pragma once

#include <cstdint>
#include <span>

#include "backend/cpu/gemm_small.hpp"
#include "backend/cpu/thread_pool.hpp"

namespace conveyor::cpu {

// Sets OpenBLAS to run single-threaded in its callers (conveyor owns the threads) and lets
// every thread of `pool` make its first BLAS call, so one-time setup is not timed as compute.
void warm_up(ThreadPool& pool);

// out[i, :] = table[ids[i], :] (bf16 rows widened). Ids are validated by the caller.
void embedding(WeightView table,    // [vocab, hidden]
               const int32_t* ids,  // [n]
               int64_t n, int64_t hidden,
               float* out,  // [n, hidden]
               ThreadPool& pool);

// out = x / sqrt(mean(x^2) + eps) * weight, row by row. `out` may alias `x`.
void rmsnorm(const float* x,       // [n, hidden]
             const float* weight,  // [hidden]
             int64_t n, int64_t hidden, double eps,
             float* out,  // [n, hidden]
             ThreadPool& pool);

// y = x * w^T (+ bias) (+ y when accumulate). Hugging Face [out, in] weight orientation; bf16
// weights are widened to fp32 (in registers for up to kSmallGemmMaxRows rows, through a small
// per-thread buffer above that) and accumulated in fp32.
struct LinearArgs {
  const float* x = nullptr;     // [n, in]
  WeightView w;                 // [out, in]
  const float* bias = nullptr;  // [out] or nullptr
  float* y = nullptr;           // [n, out]
  int64_t n = 0, in = 0, out = 0;
  bool accumulate = false;  // y += x w^T (residual add fused into the GEMM)
  // Use the row-independent small-GEMM kernel for every row count (not OpenBLAS past
  // kSmallGemmMaxRows): each row's result is then the same whatever rows come with it.
  bool row_invariant = false;
};
void linear(const LinearArgs& args, ThreadPool& pool);

// Rotary embedding in the Hugging Face rotate-half convention, in place:
// for pair (i, i + head_dim/2): x' = x*cos - x2*sin, x2' = x2*cos + x*sin with angle
// pos*inv_freq[i]. With adjacent_pairs, pair i is (2i, 2i + 1) instead: the same rotation of a
// head whose rows are in llama.cpp's GGUF order (StoredTensor::rope_pairs_adjacent).
void rope(float* x,                  // [n, n_heads, head_dim]
          const int64_t* positions,  // [n]
          int64_t n, int64_t n_heads, int64_t head_dim,
          const float* inv_freq,  // [head_dim / 2]
          ThreadPool& pool, bool adjacent_pairs = false);

// Causal GQA attention of the n new tokens of one sequence, at positions [pos0, pos0 + n),
// against that sequence's keys/values at positions [0, pos0 + n) (the new ones already written).
// Query head h reads kv head h / (n_heads / n_kv_heads). Softmax scale 1/sqrt(head_dim).
// Blocked (flash-style): tiles of queries x keys with an online softmax, never a full score
// matrix; long contexts with few queries split the keys and merge. Results do not depend on the
// thread count.
struct AttentionArgs {
  const float* q = nullptr;  // [n, n_heads, head_dim]
  // Per kv head (kv_head_stride floats apart): keys in transposed tiles of kKeyTile positions
  // (key_offset in backend/kv_cache.hpp), values as rows [positions, head_dim]; positions
  // [0, pos0 + n) written, up to the next multiple of kKeyTile allocated.
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;  // [n, n_heads, head_dim]
  int64_t n = 0, pos0 = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t kv_head_stride = 0;  // floats from one kv head's rows to the next's
};
void attention(const AttentionArgs& args, ThreadPool& pool);

// out = silu(gate) * up, elementwise. `out` may alias `gate`.
void swiglu(const float* gate, const float* up, int64_t count, float* out, ThreadPool& pool);

}  // namespace conveyor::cpu
