// Decode attention over the KV cache (one query token per sequence), split along the context
// (flash-decoding): a split kernel writes per-split partial softmax statistics and outputs, a
// reduction kernel merges them. fp32 throughout after the 16-bit loads.
#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"

namespace conveyor::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadsPerBlock = 8;  // query heads of one kv head handled by one block
constexpr int64_t kDefaultKeysPerSplit = 256;

// The query heads of one block: the largest divisor of the GQA group that is at most 8, so a
// block reads its K/V rows once for all of them.
int64_t heads_per_block(int64_t group) {
  for (int64_t h = std::min<int64_t>(group, kMaxHeadsPerBlock); h > 1; --h) {
    if (group % h == 0) return h;
  }
  return 1;
}

int64_t keys_per_split(const DecodeAttentionArgs& a) {
  return a.keys_per_split == 0 ? kDefaultKeysPerSplit : a.keys_per_split;
}

int64_t n_splits(const DecodeAttentionArgs& a) {
  const int64_t kps = keys_per_split(a);
  return (a.max_keys + kps - 1) / kps;
}

}  // namespace

// grid (n_splits, n_heads / heads, n_seqs), block 128, dynamic shared memory
// (2 * heads * D + heads * keys_per_split) floats. Block (s, g, i) handles keys
// [s * keys_per_split, ...) of sequence i for query heads [g * heads, (g + 1) * heads).
// Partials: out_partial[i, h, s, :] = sum_j exp(score_j - max) v_j and
// stats[i, h, s] = (max, sum_j exp(score_j - max)); splits past the sequence are skipped.
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) decode_attention_split_kernel(
    const T* __restrict__ q,              // [n_seqs, n_heads, D] (q_stride)
    const T* __restrict__ k_cache,        // [max_seqs, cap, n_kv_heads, D]
    const T* __restrict__ v_cache,        // same layout
    const int32_t* __restrict__ slots,    // [n_seqs]
    const int32_t* __restrict__ lengths,  // [n_seqs]
    float* __restrict__ out_partial,      // [n_seqs, n_heads, n_splits, D]
    float2* __restrict__ stats,           // [n_seqs, n_heads, n_splits]
    int n_heads, int group, int heads, int64_t q_stride, int64_t seq_stride, int64_t kv_stride,
    int max_keys, int keys_per_split, int n_splits, float scale) {
  extern __shared__ float smem_f[];
  float* q_s = smem_f;                               // [heads][D], pre-scaled
  float* scores = q_s + heads * D;                   // [heads][keys_per_split]
  float* combine = scores + heads * keys_per_split;  // [heads][D]

  const int split = blockIdx.x;
  const int h0 = blockIdx.y * heads;
  const int seq = blockIdx.z;
  const int kv_head = h0 / group;
  const int length = min(lengths[seq], max_keys);
  const int j_begin = split * keys_per_split;
  if (j_begin >= length) return;  // the reduction reads only the splits below the length
  const int j_count = min(length - j_begin, keys_per_split);

  const int64_t base = static_cast<int64_t>(slots[seq]) * seq_stride +
                       static_cast<int64_t>(j_begin) * kv_stride +
                       static_cast<int64_t>(kv_head) * D;
  const T* k_rows = k_cache + base;
  const T* v_rows = v_cache + base;

  for (int idx = threadIdx.x; idx < heads * D; idx += blockDim.x) {
    const T* q_row = q + static_cast<int64_t>(seq) * q_stride + static_cast<int64_t>(h0) * D;
    q_s[idx] = to_float(q_row[idx]) * scale;
  }
  __syncthreads();

  // Scores: warp w takes keys w, w + 4, ...; lane l holds elements l, l + 32, ... of the key.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kPerLane = D / 32;
  for (int j = warp; j < j_count; j += kWarps) {
    const T* k_row = k_rows + static_cast<int64_t>(j) * kv_stride;
    float key[kPerLane];
#pragma unroll
    for (int e = 0; e < kPerLane; ++e)
      key[e] = to_float(k_row[lane + 32 * e]);
#pragma unroll
    for (int hh = 0; hh < kMaxHeadsPerBlock; ++hh) {
      if (hh < heads) {
        float partial = 0.0f;
#pragma unroll
        for (int e = 0; e < kPerLane; ++e)
          partial += q_s[hh * D + lane + 32 * e] * key[e];
        const float score = warp_sum(partial);
        if (lane == 0) scores[hh * keys_per_split + j] = score;
      }
    }
  }
  __syncthreads();

  // Softmax statistics per head: warp w takes heads w, w + 4.
  for (int hh = warp; hh < heads; hh += kWarps) {
    float* s = scores + hh * keys_per_split;
    float m = -INFINITY;
    for (int j = lane; j < j_count; j += 32)
      m = fmaxf(m, s[j]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int j = lane; j < j_count; j += 32) {
      const float p = expf(s[j] - m);
      s[j] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      stats[(static_cast<int64_t>(seq) * n_heads + h0 + hh) * n_splits + split] =
          make_float2(m, sum);
    }
  }
  __syncthreads();

  // Values: thread t accumulates dim t % D over keys t / D, t / D + 128 / D, ...
  constexpr int kKeyLanes = kThreads / D;
  const int d = threadIdx.x % D, key_lane = threadIdx.x / D;
  float acc[kMaxHeadsPerBlock];
#pragma unroll
  for (int hh = 0; hh < kMaxHeadsPerBlock; ++hh)
    acc[hh] = 0.0f;
  for (int j = key_lane; j < j_count; j += kKeyLanes) {
    const float value = to_float(v_rows[static_cast<int64_t>(j) * kv_stride + d]);
#pragma unroll
    for (int hh = 0; hh < kMaxHeadsPerBlock; ++hh) {
      if (hh < heads) acc[hh] += scores[hh * keys_per_split + j] * value;
    }
  }
  if constexpr (kKeyLanes == 2) {
    if (key_lane == 1) {
      for (int hh = 0; hh < heads; ++hh)
        combine[hh * D + d] = acc[hh];
    }
    __syncthreads();
    if (key_lane == 1) return;
#pragma unroll
    for (int hh = 0; hh < kMaxHeadsPerBlock; ++hh) {
      if (hh < heads) acc[hh] += combine[hh * D + d];
    }
  }
  for (int hh = 0; hh < heads; ++hh) {
    out_partial[((static_cast<int64_t>(seq) * n_heads + h0 + hh) * n_splits + split) * D + d] =
        acc[hh];
  }
}

// grid (n_heads, n_seqs), block D: merges the splits of one (sequence, head).
template <typename T, int D>
__global__ void decode_attention_reduce_kernel(
    const float* __restrict__ out_partial,  // [n_seqs, n_heads, n_splits, D]
    const float2* __restrict__ stats,       // [n_seqs, n_heads, n_splits]
    const int32_t* __restrict__ lengths,    // [n_seqs]
    T* __restrict__ out,                    // [n_seqs, n_heads, D]
    int n_heads, int max_keys, int keys_per_split, int n_splits) {
  const int head = blockIdx.x, seq = blockIdx.y, d = threadIdx.x;
  const int length = min(lengths[seq], max_keys);
  const int used = (length + keys_per_split - 1) / keys_per_split;
  const int64_t row = static_cast<int64_t>(seq) * n_heads + head;
  const float2* st = stats + row * n_splits;
  const float* partial = out_partial + row * n_splits * D;
  float m = -INFINITY;
  for (int s = 0; s < used; ++s)
    m = fmaxf(m, st[s].x);
  float sum = 0.0f, acc = 0.0f;
  for (int s = 0; s < used; ++s) {
    const float w = expf(st[s].x - m);
    sum += st[s].y * w;
    acc += partial[static_cast<int64_t>(s) * D + d] * w;
  }
  out[row * D + d] = from_float<T>(acc / sum);  // length < 1 gives 0/0 = NaN, visibly wrong
}

size_t decode_attention_workspace_bytes(const DecodeAttentionArgs& a) {
  if (a.n_seqs <= 0 || a.n_heads <= 0 || a.head_dim <= 0 || a.max_keys <= 0) return 0;
  const int64_t entries = a.n_seqs * a.n_heads * n_splits(a);
  return static_cast<size_t>(entries) * (static_cast<size_t>(a.head_dim) + 2) * sizeof(float);
}

namespace {

template <typename T, int D>
void launch_decode(const DecodeAttentionArgs& a, int64_t q_stride, cudaStream_t stream) {
  const int64_t group = a.n_heads / a.n_kv_heads;
  const int64_t heads = heads_per_block(group);
  const int64_t kps = keys_per_split(a);
  const int64_t splits = n_splits(a);
  float* out_partial = static_cast<float*>(a.workspace);
  float2* stats = reinterpret_cast<float2*>(out_partial + a.n_seqs * a.n_heads * splits * D);
  const size_t smem = sizeof(float) * static_cast<size_t>(2 * heads * D + heads * kps);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  const dim3 grid(static_cast<unsigned int>(splits), static_cast<unsigned int>(a.n_heads / heads),
                  static_cast<unsigned int>(a.n_seqs));
  decode_attention_split_kernel<T, D><<<grid, kThreads, smem, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k_cache),
      static_cast<const T*>(a.v_cache), a.slots, a.lengths, out_partial, stats,
      static_cast<int>(a.n_heads), static_cast<int>(group), static_cast<int>(heads), q_stride,
      a.seq_stride, a.n_kv_heads * D, static_cast<int>(a.max_keys), static_cast<int>(kps),
      static_cast<int>(splits), scale);
  CONVEYOR_CUDA_CHECK(cudaGetLastError());

  const dim3 reduce_grid(static_cast<unsigned int>(a.n_heads), static_cast<unsigned int>(a.n_seqs));
  decode_attention_reduce_kernel<T, D><<<reduce_grid, D, 0, stream>>>(
      out_partial, stats, a.lengths, static_cast<T*>(a.out), static_cast<int>(a.n_heads),
      static_cast<int>(a.max_keys), static_cast<int>(kps), static_cast<int>(splits));
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_decode_attention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  const char* op = "launch_decode_attention";
  require_half_dtype(a.dtype, op, "dtype");
  require_non_negative(a.n_seqs, op, "n_seqs");
  if (a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0) {
    invalid_argument(op, "n_heads (", a.n_heads, ") must be a positive multiple of n_kv_heads (",
                     a.n_kv_heads, ")");
  }
  if (a.head_dim != 64 && a.head_dim != 128) {
    invalid_argument(op, "head_dim is ", a.head_dim,
                     " but the kernel supports 64 and 128; add an instantiation for it");
  }
  require_positive(a.max_keys, op, "max_keys");
  if (a.max_keys > INT32_MAX)
    invalid_argument(op, "max_keys is ", a.max_keys, " but positions are int32");
  if (a.keys_per_split != 0 &&
      (a.keys_per_split < 32 || a.keys_per_split > 1024 || a.keys_per_split % 32 != 0)) {
    invalid_argument(op, "keys_per_split is ", a.keys_per_split,
                     " but must be 0 (default) or a multiple of 32 in [32, 1024]");
  }
  const int64_t kv_dim = a.n_kv_heads * a.head_dim;
  if (a.seq_stride < a.max_keys * kv_dim) {
    invalid_argument(op, "seq_stride is ", a.seq_stride, " but max_keys (", a.max_keys,
                     ") rows of ", kv_dim, " elements need ", a.max_keys * kv_dim);
  }
  if (a.n_seqs > 65535)
    invalid_argument(op, "n_seqs is ", a.n_seqs, " but at most 65535 per launch");
  if (a.n_heads > 65535) invalid_argument(op, "n_heads is ", a.n_heads, " but at most 65535");
  const int64_t q_stride = resolve_stride(a.q_stride, a.n_heads * a.head_dim, op, "q_stride");
  if (a.n_seqs == 0) return;
  require_pointer(a.q, op, "q");
  require_pointer(a.k_cache, op, "k_cache");
  require_pointer(a.v_cache, op, "v_cache");
  require_pointer(a.slots, op, "slots");
  require_pointer(a.lengths, op, "lengths");
  require_pointer(a.out, op, "out");
  require_pointer(a.workspace, op, "workspace");
  require_aligned(a.workspace, 16, op, "workspace");

  dispatch_half_head_dim(a.dtype, a.head_dim, [&](auto tag, auto head_dim) {
    launch_decode<decltype(tag), decltype(head_dim)::value>(a, q_stride, stream);
  });
}

}  // namespace conveyor::kernels
