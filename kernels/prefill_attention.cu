// Prefill attention: causal GQA flash attention of one sequence's chunk of new tokens, with
// WMMA (16x16x16 tensor-core tiles) for Q.K^T and P.V, online softmax and fp32 accumulation.
#include <mma.h>

#include <cmath>

#include "kernels/common.cuh"

namespace conveyor::kernels {
namespace {

constexpr int kQueriesPerBlock = 64;  // Br: 4 warps x 16 query rows
constexpr int kKeysPerTile = 64;      // Bc
constexpr int kWarps = kQueriesPerBlock / 16;
constexpr int kThreads = kWarps * 32;

// Shared-memory geometry of one block. Row pads keep every WMMA pointer 32-byte aligned and
// every ldm a multiple of 8 (16-bit) or 4 (fp32) elements, and shift rows across banks.
template <typename T, int D>
struct PrefillSmem {
  static constexpr int kDPad = D + 8;             // Q, K, V rows (T)
  static constexpr int kSPad = kKeysPerTile + 4;  // scores (float)
  static constexpr int kPPad = kKeysPerTile + 8;  // probabilities (T)
  static constexpr int kOPad = D + 4;             // output accumulator (float)
  static constexpr size_t kQ = 0;                 // [Br][kDPad] T
  static constexpr size_t kK = kQ + sizeof(T) * kQueriesPerBlock * kDPad;  // [Bc][kDPad] T
  static constexpr size_t kV = kK + sizeof(T) * kKeysPerTile * kDPad;      // [Bc][kDPad] T
  static constexpr size_t kS = kV + sizeof(T) * kKeysPerTile * kDPad;      // [warps][16][kSPad] f32
  static constexpr size_t kP = kS + sizeof(float) * kWarps * 16 * kSPad;   // [warps][16][kPPad] T
  static constexpr size_t kO = kP + sizeof(T) * kWarps * 16 * kPPad;       // [warps][16][kOPad] f32
  static constexpr size_t kBytes = kO + sizeof(float) * kWarps * 16 * kOPad;
  static_assert(kK % 128 == 0 && kV % 128 == 0 && kS % 128 == 0 && kP % 128 == 0 && kO % 128 == 0,
                "shared-memory regions must stay 128-byte aligned");
};

// Copies `n_rows` rows of D elements (rows `stride` apart in global memory) into a shared tile
// of `rows` rows, zero-filling the rows past n_rows. 16-byte vectors; the launcher checks the
// alignment.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t stride, int rows,
                                          int n_rows) {
  constexpr int kPerVector = 16 / sizeof(T);
  constexpr int kVectorsPerRow = D / kPerVector;
  for (int idx = threadIdx.x; idx < rows * kVectorsPerRow; idx += blockDim.x) {
    const int r = idx / kVectorsPerRow, c = (idx % kVectorsPerRow) * kPerVector;
    uint4 value = make_uint4(0, 0, 0, 0);
    if (r < n_rows) value = *reinterpret_cast<const uint4*>(src + r * stride + c);
    *reinterpret_cast<uint4*>(tile + r * PrefillSmem<T, D>::kDPad + c) = value;
  }
}

}  // namespace

// grid (ceil(n / 64), n_heads), block 128, dynamic shared memory PrefillSmem<T, D>::kBytes.
// Warp w owns query rows [16w, 16w + 16) of the block's tile; lanes 2r and 2r + 1 own row r of
// the warp for the softmax (each half of the key columns and half of the head dims).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    prefill_attention_kernel(const T* __restrict__ q,  // [n, n_heads, D] (q_stride)
                             const T* __restrict__ k,  // [pos0 + n, n_kv_heads, D]
                             const T* __restrict__ v,  // [pos0 + n, n_kv_heads, D]
                             T* __restrict__ out,      // [n, n_heads, D]
                             int n, int pos0, int n_heads, int group, int64_t q_stride,
                             int64_t kv_stride, float scale) {
  using namespace nvcuda;
  using Smem = PrefillSmem<T, D>;
  extern __shared__ __align__(128) unsigned char smem[];
  T* q_tile = reinterpret_cast<T*>(smem + Smem::kQ);
  T* k_tile = reinterpret_cast<T*>(smem + Smem::kK);
  T* v_tile = reinterpret_cast<T*>(smem + Smem::kV);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* s_warp = reinterpret_cast<float*>(smem + Smem::kS) + warp * 16 * Smem::kSPad;
  T* p_warp = reinterpret_cast<T*>(smem + Smem::kP) + warp * 16 * Smem::kPPad;
  float* o_warp = reinterpret_cast<float*>(smem + Smem::kO) + warp * 16 * Smem::kOPad;

  const int q0 = blockIdx.x * kQueriesPerBlock;
  const int head = blockIdx.y;
  const int kv_head = head / group;
  const int n_keys = pos0 + n;
  // Keys any row of this block may see: up to the position of its last valid query.
  const int key_end = pos0 + min(n, q0 + kQueriesPerBlock);

  load_tile<T, D>(q_tile, q + static_cast<int64_t>(q0) * q_stride + static_cast<int64_t>(head) * D,
                  q_stride, kQueriesPerBlock, n - q0);
  for (int idx = lane; idx < 16 * Smem::kOPad; idx += 32)
    o_warp[idx] = 0.0f;

  const int row = lane / 2, side = lane % 2;
  const int query = q0 + warp * 16 + row;  // index in the chunk (>= n for padding rows)
  const int query_pos = pos0 + query;      // sees keys [0, query_pos]
  float row_max = -INFINITY, row_sum = 0.0f;

  for (int j0 = 0; j0 < key_end; j0 += kKeysPerTile) {
    __syncthreads();  // every warp is done with the previous K/V tile (and Q is loaded)
    const int64_t kv_offset =
        static_cast<int64_t>(j0) * kv_stride + static_cast<int64_t>(kv_head) * D;
    load_tile<T, D>(k_tile, k + kv_offset, kv_stride, kKeysPerTile, n_keys - j0);
    load_tile<T, D>(v_tile, v + kv_offset, kv_stride, kKeysPerTile, n_keys - j0);
    __syncthreads();

    // S[16, 64] = Q_warp[16, D] . K_tile^T: K rows stored row-major are K^T column-major.
    for (int c = 0; c < kKeysPerTile / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s_frag;
      wmma::fill_fragment(s_frag, 0.0f);
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b_frag;
        wmma::load_matrix_sync(a_frag, q_tile + (warp * 16) * Smem::kDPad + kk * 16, Smem::kDPad);
        wmma::load_matrix_sync(b_frag, k_tile + (c * 16) * Smem::kDPad + kk * 16, Smem::kDPad);
        wmma::mma_sync(s_frag, a_frag, b_frag, s_frag);
      }
      wmma::store_matrix_sync(s_warp + c * 16, s_frag, Smem::kSPad, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of this lane's row over its 32 columns of the tile.
    float* s_row = s_warp + row * Smem::kSPad + side * 32;
    float tile_max = -INFINITY;
    for (int t = 0; t < 32; ++t) {
      const int key = j0 + side * 32 + t;
      const bool visible = key < n_keys && key <= query_pos;
      const float s = visible ? s_row[t] * scale : -INFINITY;
      s_row[t] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float new_max = fmaxf(row_max, tile_max);
    // A row that has seen no visible key yet keeps max -inf: its p and alpha must not be NaN.
    const bool empty = new_max == -INFINITY;
    const float alpha = empty ? 1.0f : expf(row_max - new_max);
    T* p_row = p_warp + row * Smem::kPPad + side * 32;
    float tile_sum = 0.0f;
    for (int t = 0; t < 32; ++t) {
      const T p = from_float<T>(empty ? 0.0f : expf(s_row[t] - new_max));
      p_row[t] = p;
      tile_sum += to_float(p);  // sum what the P.V product uses
    }
    tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
    row_sum = row_sum * alpha + tile_sum;
    row_max = new_max;
    float* o_row = o_warp + row * Smem::kOPad + side * (D / 2);
    for (int t = 0; t < D / 2; ++t)
      o_row[t] *= alpha;
    __syncwarp();

    // O_warp[16, D] += P[16, 64] . V_tile[64, D].
#pragma unroll
    for (int nb = 0; nb < D / 16; ++nb) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o_frag;
      wmma::load_matrix_sync(o_frag, o_warp + nb * 16, Smem::kOPad, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kKeysPerTile / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b_frag;
        wmma::load_matrix_sync(a_frag, p_warp + kk * 16, Smem::kPPad);
        wmma::load_matrix_sync(b_frag, v_tile + (kk * 16) * Smem::kDPad + nb * 16, Smem::kDPad);
        wmma::mma_sync(o_frag, a_frag, b_frag, o_frag);
      }
      wmma::store_matrix_sync(o_warp + nb * 16, o_frag, Smem::kOPad, wmma::mem_row_major);
    }
    __syncwarp();
  }

  if (query < n) {
    const float inv_sum = 1.0f / row_sum;
    const float* o_row = o_warp + row * Smem::kOPad + side * (D / 2);
    T* dst = out + (static_cast<int64_t>(query) * n_heads + head) * D + side * (D / 2);
    for (int t = 0; t < D / 2; ++t)
      dst[t] = from_float<T>(o_row[t] * inv_sum);
  }
}

namespace {

template <typename T, int D>
void launch_prefill(const PrefillAttentionArgs& a, int64_t q_stride, cudaStream_t stream) {
  using Smem = PrefillSmem<T, D>;
  auto kernel = prefill_attention_kernel<T, D>;
  // Above the 48 KiB default: opt in (a per-function attribute, not global state).
  CONVEYOR_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(Smem::kBytes)));
  const dim3 grid(grid_dim(a.n, kQueriesPerBlock), static_cast<unsigned int>(a.n_heads));
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  kernel<<<grid, kThreads, Smem::kBytes, stream>>>(
      static_cast<const T*>(a.q), static_cast<const T*>(a.k), static_cast<const T*>(a.v),
      static_cast<T*>(a.out), static_cast<int>(a.n), static_cast<int>(a.pos0),
      static_cast<int>(a.n_heads), static_cast<int>(a.n_heads / a.n_kv_heads), q_stride,
      a.n_kv_heads * D, scale);
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

size_t prefill_attention_shared_bytes(int64_t head_dim) {
  // Both 16-bit element types take the same space.
  if (head_dim == 64) return PrefillSmem<__nv_bfloat16, 64>::kBytes;
  if (head_dim == 128) return PrefillSmem<__nv_bfloat16, 128>::kBytes;
  return 0;
}

void launch_prefill_attention(const PrefillAttentionArgs& a, cudaStream_t stream) {
  const char* op = "launch_prefill_attention";
  require_half_dtype(a.dtype, op, "dtype");
  require_non_negative(a.n, op, "n");
  require_non_negative(a.pos0, op, "pos0");
  if (a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0) {
    invalid_argument(op, "n_heads (", a.n_heads, ") must be a positive multiple of n_kv_heads (",
                     a.n_kv_heads, ")");
  }
  if (a.head_dim != 64 && a.head_dim != 128) {
    invalid_argument(op, "head_dim is ", a.head_dim,
                     " but the kernel supports 64 and 128; add an instantiation for it");
  }
  if (a.n_heads > 65535) invalid_argument(op, "n_heads is ", a.n_heads, " but at most 65535");
  if (a.pos0 + a.n > INT32_MAX) {
    invalid_argument(op, "pos0 + n is ", a.pos0 + a.n, " but positions are int32");
  }
  const int64_t q_stride = resolve_stride(a.q_stride, a.n_heads * a.head_dim, op, "q_stride");
  if (q_stride % 8 != 0) {
    invalid_argument(op, "q_stride is ", q_stride, " but must be a multiple of 8 (16-byte rows)");
  }
  if (a.n == 0) return;
  require_pointer(a.q, op, "q");
  require_pointer(a.k, op, "k");
  require_pointer(a.v, op, "v");
  require_pointer(a.out, op, "out");
  require_aligned(a.q, 16, op, "q");
  require_aligned(a.k, 16, op, "k");
  require_aligned(a.v, 16, op, "v");

  dispatch_half_head_dim(a.dtype, a.head_dim, [&](auto tag, auto head_dim) {
    launch_prefill<decltype(tag), decltype(head_dim)::value>(a, q_stride, stream);
  });
}

}  // namespace conveyor::kernels
