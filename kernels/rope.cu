// Rotary position embedding of q and k (rotate-half), with the optional Q/K/V bias add of Qwen2.
#include "kernels/common.cuh"

namespace conveyor::kernels {

// grid (n), block 256: block i handles token i. Work items of a token: first the rotated pairs
// of q heads then k heads ((n_heads + n_kv_heads) * half), then the v elements when v has a bias.
template <typename T>
__global__ void rope_kernel(T* __restrict__ q,             // [n, n_heads, head_dim] (q_stride)
                            T* __restrict__ k,             // [n, n_kv_heads, head_dim] (k_stride)
                            T* __restrict__ v,             // [n, n_kv_heads, head_dim] (v_stride)
                            const T* __restrict__ q_bias,  // [n_heads * head_dim] or null
                            const T* __restrict__ k_bias,  // [n_kv_heads * head_dim] or null
                            const T* __restrict__ v_bias,  // [n_kv_heads * head_dim] or null
                            const int32_t* __restrict__ positions,  // [n]
                            const float* __restrict__ inv_freq,     // [head_dim / 2]
                            int n_heads, int n_kv_heads, int head_dim, int64_t q_stride,
                            int64_t k_stride, int64_t v_stride) {
  const int64_t token = blockIdx.x;
  const int half = head_dim / 2;
  const int n_pairs = (n_heads + n_kv_heads) * half;
  const int n_v = v_bias != nullptr ? n_kv_heads * head_dim : 0;
  const double pos = static_cast<double>(positions[token]);
  for (int item = threadIdx.x; item < n_pairs + n_v; item += blockDim.x) {
    if (item >= n_pairs) {
      const int j = item - n_pairs;
      T* vr = v + token * v_stride;
      vr[j] = from_float<T>(to_float(vr[j]) + to_float(v_bias[j]));
      continue;
    }
    const int head = item / half, i = item % half;
    const bool is_q = head < n_heads;
    T* x = is_q ? q + token * q_stride + static_cast<int64_t>(head) * head_dim
                : k + token * k_stride + static_cast<int64_t>(head - n_heads) * head_dim;
    const T* bias = is_q ? q_bias : k_bias;
    float a = to_float(x[i]), b = to_float(x[i + half]);
    if (bias != nullptr) {
      const int64_t offset = static_cast<int64_t>(is_q ? head : head - n_heads) * head_dim;
      a += to_float(bias[offset + i]);
      b += to_float(bias[offset + i + half]);
    }
    // The angle in double as the CPU op: pos * inv_freq reaches 1e5 rad at long contexts.
    double s, c;
    sincos(pos * static_cast<double>(inv_freq[i]), &s, &c);
    const float cf = static_cast<float>(c), sf = static_cast<float>(s);
    x[i] = from_float<T>(a * cf - b * sf);
    x[i + half] = from_float<T>(b * cf + a * sf);
  }
}

void launch_rope(const RopeArgs& a, cudaStream_t stream) {
  const char* op = "launch_rope";
  require_half_dtype(a.dtype, op, "dtype");
  require_non_negative(a.n, op, "n");
  require_positive(a.n_heads, op, "n_heads");
  require_positive(a.n_kv_heads, op, "n_kv_heads");
  if (a.head_dim <= 0 || a.head_dim % 2 != 0 || a.head_dim > 1024) {
    invalid_argument(op, "head_dim is ", a.head_dim, " but must be positive, even and <= 1024");
  }
  if ((a.n_heads + a.n_kv_heads) * a.head_dim > INT32_MAX) {
    invalid_argument(op, "(n_heads + n_kv_heads) * head_dim is too large for the kernel");
  }
  if (a.n > INT32_MAX)
    invalid_argument(op, "n is ", a.n, " but the grid holds at most 2^31-1 rows");
  const int64_t q_stride = resolve_stride(a.q_stride, a.n_heads * a.head_dim, op, "q_stride");
  const int64_t k_stride = resolve_stride(a.k_stride, a.n_kv_heads * a.head_dim, op, "k_stride");
  const int64_t v_stride = resolve_stride(a.v_stride, a.n_kv_heads * a.head_dim, op, "v_stride");
  if (a.n == 0) return;
  require_pointer(a.q, op, "q");
  require_pointer(a.k, op, "k");
  if (a.v_bias != nullptr) require_pointer(a.v, op, "v (v_bias is set)");
  require_pointer(a.positions, op, "positions");
  require_pointer(a.inv_freq, op, "inv_freq");

  dispatch_half(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<<<grid_dim(a.n, 1), 256, 0, stream>>>(
        static_cast<T*>(a.q), static_cast<T*>(a.k), static_cast<T*>(a.v),
        static_cast<const T*>(a.q_bias), static_cast<const T*>(a.k_bias),
        static_cast<const T*>(a.v_bias), a.positions, a.inv_freq, static_cast<int>(a.n_heads),
        static_cast<int>(a.n_kv_heads), static_cast<int>(a.head_dim), q_stride, k_stride, v_stride);
  });
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
