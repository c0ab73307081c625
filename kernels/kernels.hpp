// Host API of the CUDA kernels of a Llama-family decoder: one Args struct and one launcher per op.
// Callers need no CUDA header: streams are the opaque cudaStream_t, tensors are device pointers
// with an explicit DType (kBF16 or kF16 activations and weights, fp32 accumulation inside).
//
// Conventions shared by every launcher:
// - `launch_<op>(args, stream)` first validates the shapes, dtypes, pointer nullness and
//   alignment on the host and throws conveyor::Error(kInvalidArgument) before any CUDA call; a
//   failed launch throws conveyor::Error(kDevice) naming the call, file and line.
// - Everything is enqueued on `stream` (asynchronous); no launcher synchronizes, allocates or
//   keeps state between calls. Workspaces are sized on the host (`*_workspace_bytes`) and owned
//   by the caller (plan/run split).
// - Device index arrays (token ids, positions, sequence slots, lengths) are int32.
// - "Row stride" fields are in elements; 0 means packed (the row length of that tensor).
// - Zero-sized work (n == 0) is a no-op that still validates the non-size fields it can.
#pragma once

#include <cstddef>
#include <cstdint>

#include "conveyor/dtype.hpp"

typedef struct CUstream_st* cudaStream_t;

namespace conveyor::kernels {

// ---- embedding -------------------------------------------------------------------------------

// out[i, :] = table[ids[i], :]. An id outside [0, vocab) writes a row of NaN (the caller is
// expected to validate ids on the host; the NaN makes a missed check visible).
struct EmbeddingArgs {
  DType dtype = DType::kBF16;      // of table (kBF16 or kF16)
  DType out_dtype = DType::kBF16;  // kF32 or dtype
  const void* table = nullptr;     // [vocab, hidden]
  const int32_t* ids = nullptr;    // [n] (device)
  void* out = nullptr;             // [n, hidden]
  int64_t n = 0, vocab = 0, hidden = 0;
};
void launch_embedding(const EmbeddingArgs& args, cudaStream_t stream);

// ---- RMSNorm fused with the residual add ----------------------------------------------------

// Per row: residual += x (skipped when x is null), then
// out = residual / sqrt(mean(residual^2) + eps) * weight, in fp32 (the normalized value is the
// residual as stored, i.e. after rounding to residual_dtype). `out` must not alias `residual`
// or `x`.
struct RmsNormArgs {
  DType dtype = DType::kBF16;           // of x, weight and out (kBF16 or kF16)
  DType residual_dtype = DType::kBF16;  // kF32 or dtype
  void* residual = nullptr;             // [n, hidden] read (and written when x is set)
  const void* x = nullptr;              // [n, hidden] or nullptr
  const void* weight = nullptr;         // [hidden]
  void* out = nullptr;                  // [n, hidden]
  int64_t n = 0, hidden = 0;
  double eps = 1e-5;
};
void launch_rmsnorm_residual(const RmsNormArgs& args, cudaStream_t stream);

// ---- RoPE (+ Q/K/V bias) --------------------------------------------------------------------

// In place, per token i: q += q_bias, k += k_bias, v += v_bias (each when non-null; Qwen2), then
// rotary embedding of q and k in the Hugging Face rotate-half convention: for pair
// (j, j + head_dim/2), x' = x*cos - x2*sin, x2' = x2*cos + x*sin with angle
// positions[i] * inv_freq[j], the angle and its sin/cos computed in double as the CPU op does.
// q, k and v may be column slices of one fused QKV projection (set the row strides).
struct RopeArgs {
  DType dtype = DType::kBF16;          // of q, k, v and the biases
  void* q = nullptr;                   // [n, n_heads, head_dim], rows q_stride apart
  void* k = nullptr;                   // [n, n_kv_heads, head_dim], rows k_stride apart
  void* v = nullptr;                   // [n, n_kv_heads, head_dim], rows v_stride apart; only
                                       // touched (and required) when v_bias is set
  const void* q_bias = nullptr;        // [n_heads * head_dim] or nullptr
  const void* k_bias = nullptr;        // [n_kv_heads * head_dim] or nullptr
  const void* v_bias = nullptr;        // [n_kv_heads * head_dim] or nullptr
  const int32_t* positions = nullptr;  // [n] (device)
  const float* inv_freq = nullptr;     // [head_dim / 2] (device), from rope_inv_freq()
  int64_t n = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t q_stride = 0, k_stride = 0, v_stride = 0;  // 0: packed
};
void launch_rope(const RopeArgs& args, cudaStream_t stream);

// ---- SwiGLU ----------------------------------------------------------------------------------

// out = silu(gate) * up elementwise, in fp32. gate and up may be the two halves of one fused
// gate_up projection (gate = buf, up = buf + inter, both strides 2 * inter). `out` may alias
// `gate` only with out_stride == gate_stride.
struct SwigluArgs {
  DType dtype = DType::kBF16;
  const void* gate = nullptr;  // [n, inter], rows gate_stride apart
  const void* up = nullptr;    // [n, inter], rows up_stride apart
  void* out = nullptr;         // [n, inter], rows out_stride apart
  int64_t n = 0, inter = 0;
  int64_t gate_stride = 0, up_stride = 0, out_stride = 0;  // 0: packed
};
void launch_swiglu(const SwigluArgs& args, cudaStream_t stream);

// ---- KV-cache append -------------------------------------------------------------------------

// Device KV cache layout of one layer: [max_seqs, seq_capacity, n_kv_heads, head_dim], i.e. row
// (slot, position) at cache + slot * seq_stride + position * kv_dim with
// seq_stride >= seq_capacity * kv_dim. Copies new row i of k_new / v_new to
// (slots[i], positions[i]) of k_cache / v_cache. Slots and positions are validated by the caller
// (the host KV bookkeeping); the kernel does not bound-check them.
struct KvAppendArgs {
  DType dtype = DType::kBF16;
  const void* k_new = nullptr;         // [n, kv_dim], rows src_stride apart
  const void* v_new = nullptr;         // [n, kv_dim], rows src_stride apart
  void* k_cache = nullptr;             // [max_seqs, seq_capacity, kv_dim] (see above)
  void* v_cache = nullptr;             // same layout as k_cache
  const int32_t* slots = nullptr;      // [n] (device)
  const int32_t* positions = nullptr;  // [n] (device)
  int64_t n = 0, kv_dim = 0;           // kv_dim = n_kv_heads * head_dim
  int64_t seq_stride = 0;              // elements between sequence slots of the cache
  int64_t src_stride = 0;              // 0: packed (kv_dim)
};
void launch_kv_append(const KvAppendArgs& args, cudaStream_t stream);

// ---- prefill attention -----------------------------------------------------------------------

// Causal GQA attention of the n new tokens of one sequence at positions [pos0, pos0 + n) against
// that sequence's keys/values at positions [0, pos0 + n) (the new ones already appended): query
// i attends keys [0, pos0 + i]. Query head h reads kv head h / (n_heads / n_kv_heads); softmax
// scale 1/sqrt(head_dim). Flash-style: tiles of 64 queries x 64 keys, tensor cores (WMMA
// 16x16x16) for both products, online softmax and all accumulation in fp32.
// head_dim must be 64 or 128; pointers 16-byte aligned; q_stride a multiple of 8.
struct PrefillAttentionArgs {
  DType dtype = DType::kBF16;
  const void* q = nullptr;  // [n, n_heads, head_dim], rows q_stride apart
  const void* k = nullptr;  // [>= pos0 + n, n_kv_heads, head_dim] (cache rows of the sequence)
  const void* v = nullptr;  // [>= pos0 + n, n_kv_heads, head_dim]
  void* out = nullptr;      // [n, n_heads, head_dim] (packed)
  int64_t n = 0, pos0 = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t q_stride = 0;  // 0: packed (n_heads * head_dim)
};
void launch_prefill_attention(const PrefillAttentionArgs& args, cudaStream_t stream);
// Dynamic shared memory one prefill-attention block needs at this head_dim (64 or 128; 0 for
// any other): devices whose per-block opt-in limit is lower cannot run the kernel.
size_t prefill_attention_shared_bytes(int64_t head_dim);

// ---- decode attention (split-K over the context) ---------------------------------------------

// One query token per sequence against its cached keys/values [0, lengths[i]) (the new token's
// K/V already appended at lengths[i] - 1), cache layout as in KvAppendArgs. The context is cut
// into splits of keys_per_split keys, each split handled by its own block (partial max, sum and
// unnormalized output in fp32 to the workspace), then a reduction kernel merges the splits.
// Requires 1 <= lengths[i] <= max_keys (larger lengths are clamped to max_keys).
struct DecodeAttentionArgs {
  DType dtype = DType::kBF16;
  const void* q = nullptr;           // [n_seqs, n_heads, head_dim], rows q_stride apart
  const void* k_cache = nullptr;     // [max_seqs, seq_capacity, n_kv_heads, head_dim]
  const void* v_cache = nullptr;     // same layout
  const int32_t* slots = nullptr;    // [n_seqs] (device) cache slot of each sequence
  const int32_t* lengths = nullptr;  // [n_seqs] (device) keys to attend, >= 1
  void* out = nullptr;               // [n_seqs, n_heads, head_dim] (packed)
  void* workspace = nullptr;         // decode_attention_workspace_bytes(args) bytes, 16-aligned
  int64_t n_seqs = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t max_keys = 0;        // upper bound of lengths[] (sizes the grid and the workspace)
  int64_t seq_stride = 0;      // elements between sequence slots of the cache
  int64_t q_stride = 0;        // 0: packed
  int64_t keys_per_split = 0;  // 0: default (256); else a multiple of 32 in [32, 1024]
};
// Workspace bytes for `args` (depends on n_seqs, n_heads, head_dim, max_keys, keys_per_split).
size_t decode_attention_workspace_bytes(const DecodeAttentionArgs& args);
void launch_decode_attention(const DecodeAttentionArgs& args, cudaStream_t stream);

// ---- sampling --------------------------------------------------------------------------------

// tokens[r] = argmax of row r (ties go to the lowest id; NaN never chosen; -1 when the whole row
// is NaN).
struct ArgmaxArgs {
  const float* logits = nullptr;  // [n_rows, vocab] fp32
  int32_t* tokens = nullptr;      // [n_rows] (device)
  int64_t n_rows = 0, vocab = 0;
};
void launch_argmax(const ArgmaxArgs& args, cudaStream_t stream);

// Per-row sampling parameters as the device reads them (mirror of conveyor::SamplingParams plus
// the position that keys the random draw). temperature == 0 is greedy.
struct SampleRowParams {
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;  // 0: off
  uint64_t seed = 0;
  int64_t position = 0;
};

// The same choice as conveyor::sample_token (temperature, then top-k, then top-p, then a draw
// u = uniform(seed, position) over the kept mass, ties between equal logits by lowest id), one
// block per row. The kept set and the crossing of the cumulative mass are found by radix
// descent over (logit, id) keys with fp64 mass sums in a fixed reduction order (deterministic);
// it differs from the CPU's sequential sum only when a cumulative mass lands within fp64
// rounding of top_p or of the draw.
struct SampleArgs {
  const float* logits = nullptr;            // [n_rows, vocab] fp32
  const SampleRowParams* params = nullptr;  // [n_rows] (device)
  int32_t* tokens = nullptr;                // [n_rows] (device)
  int64_t n_rows = 0, vocab = 0;
};
void launch_sample(const SampleArgs& args, cudaStream_t stream);

// ---- random weights ----------------------------------------------------------------------------

// out[i] = random_weight(key, i, mean, half_width) (core/random_bits.hpp) rounded to dtype:
// a random-weights model drawn where it lives, bit for bit the host's values after rounding.
struct RandomFillArgs {
  DType dtype = DType::kBF16;  // of out (kBF16 or kF16)
  void* out = nullptr;         // [numel]
  int64_t numel = 0;
  uint64_t key = 0;
  float mean = 0.0f;
  float half_width = 0.0f;
};
void launch_random_fill(const RandomFillArgs& args, cudaStream_t stream);

}  // namespace conveyor::kernels
