// KV-cache append: copies the new K/V rows of a micro-batch to their (slot, position) rows.
#include "kernels/common.cuh"

namespace conveyor::kernels {

// grid (n), block 128: block i copies row i of K and V in 16-byte vectors when kv_dim and the
// strides allow it (checked by the launcher: `vectorized`), element by element otherwise.
template <typename T, bool vectorized>
__global__ void kv_append_kernel(const T* __restrict__ k_new,        // [n, kv_dim] (src_stride)
                                 const T* __restrict__ v_new,        // [n, kv_dim] (src_stride)
                                 T* __restrict__ k_cache,            // [max_seqs, capacity, kv_dim]
                                 T* __restrict__ v_cache,            // [max_seqs, capacity, kv_dim]
                                 const int32_t* __restrict__ slots,  // [n]
                                 const int32_t* __restrict__ positions,  // [n]
                                 int64_t kv_dim, int64_t seq_stride, int64_t src_stride) {
  const int64_t i = blockIdx.x;
  const int64_t dst =
      static_cast<int64_t>(slots[i]) * seq_stride + static_cast<int64_t>(positions[i]) * kv_dim;
  const int64_t src = i * src_stride;
  if constexpr (vectorized) {
    constexpr int kPerVector = 16 / sizeof(T);
    const int64_t n_vectors = kv_dim / kPerVector;
    const uint4* ks = reinterpret_cast<const uint4*>(k_new + src);
    const uint4* vs = reinterpret_cast<const uint4*>(v_new + src);
    uint4* kd = reinterpret_cast<uint4*>(k_cache + dst);
    uint4* vd = reinterpret_cast<uint4*>(v_cache + dst);
    for (int64_t j = threadIdx.x; j < n_vectors; j += blockDim.x) {
      kd[j] = ks[j];
      vd[j] = vs[j];
    }
  } else {
    for (int64_t j = threadIdx.x; j < kv_dim; j += blockDim.x) {
      k_cache[dst + j] = k_new[src + j];
      v_cache[dst + j] = v_new[src + j];
    }
  }
}

void launch_kv_append(const KvAppendArgs& a, cudaStream_t stream) {
  const char* op = "launch_kv_append";
  require_half_dtype(a.dtype, op, "dtype");
  require_non_negative(a.n, op, "n");
  require_positive(a.kv_dim, op, "kv_dim");
  if (a.seq_stride < a.kv_dim) {
    invalid_argument(op, "seq_stride is ", a.seq_stride, " but must hold at least one row of ",
                     a.kv_dim, " elements");
  }
  if (a.n > INT32_MAX)
    invalid_argument(op, "n is ", a.n, " but the grid holds at most 2^31-1 rows");
  const int64_t src_stride = resolve_stride(a.src_stride, a.kv_dim, op, "src_stride");
  if (a.n == 0) return;
  require_pointer(a.k_new, op, "k_new");
  require_pointer(a.v_new, op, "v_new");
  require_pointer(a.k_cache, op, "k_cache");
  require_pointer(a.v_cache, op, "v_cache");
  require_pointer(a.slots, op, "slots");
  require_pointer(a.positions, op, "positions");

  auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool vectorized = a.kv_dim % 8 == 0 && a.seq_stride % 8 == 0 && src_stride % 8 == 0 &&
                          aligned(a.k_new) && aligned(a.v_new) && aligned(a.k_cache) &&
                          aligned(a.v_cache);
  dispatch_half(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* k_new = static_cast<const T*>(a.k_new);
    const T* v_new = static_cast<const T*>(a.v_new);
    T* k_cache = static_cast<T*>(a.k_cache);
    T* v_cache = static_cast<T*>(a.v_cache);
    if (vectorized) {
      kv_append_kernel<T, true><<<grid_dim(a.n, 1), 128, 0, stream>>>(
          k_new, v_new, k_cache, v_cache, a.slots, a.positions, a.kv_dim, a.seq_stride, src_stride);
    } else {
      kv_append_kernel<T, false><<<grid_dim(a.n, 1), 128, 0, stream>>>(
          k_new, v_new, k_cache, v_cache, a.slots, a.positions, a.kv_dim, a.seq_stride, src_stride);
    }
  });
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
