// RMSNorm fused with the residual add: residual += x; out = rmsnorm(residual) * weight (fp32).
#include <algorithm>

#include "kernels/common.cuh"

namespace conveyor::kernels {

// grid (n), block 256..1024: one row per block. Each thread re-reads in the second pass exactly
// the elements it wrote in the first, so only the reduction needs a barrier.
template <typename T, typename R>
__global__ void rmsnorm_residual_kernel(R* __restrict__ residual,      // [n, hidden]
                                        const T* __restrict__ x,       // [n, hidden] or null
                                        const T* __restrict__ weight,  // [hidden]
                                        T* __restrict__ out,           // [n, hidden]
                                        int64_t hidden, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  R* res = residual + row * hidden;
  float sum_squares = 0.0f;
  if (x != nullptr) {
    const T* xr = x + row * hidden;
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      const R stored = from_float<R>(to_float(res[j]) + to_float(xr[j]));
      res[j] = stored;
      const float r = to_float(stored);  // normalize what is stored
      sum_squares += r * r;
    }
  } else {
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x) {
      const float r = to_float(res[j]);
      sum_squares += r * r;
    }
  }
  sum_squares = block_sum(sum_squares, scratch);
  const float scale = rsqrtf(sum_squares / static_cast<float>(hidden) + eps);
  T* o = out + row * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
    o[j] = from_float<T>((to_float(res[j]) * scale) * to_float(weight[j]));
}

void launch_rmsnorm_residual(const RmsNormArgs& a, cudaStream_t stream) {
  const char* op = "launch_rmsnorm_residual";
  require_half_dtype(a.dtype, op, "dtype");
  if (a.residual_dtype != DType::kF32 && a.residual_dtype != a.dtype) {
    invalid_argument(op, "residual_dtype is ", dtype_name(a.residual_dtype), " but must be F32 or ",
                     dtype_name(a.dtype));
  }
  require_non_negative(a.n, op, "n");
  require_positive(a.hidden, op, "hidden");
  if (!(a.eps > 0.0)) invalid_argument(op, "eps is ", a.eps, " but must be > 0");
  if (a.n > INT32_MAX)
    invalid_argument(op, "n is ", a.n, " but the grid holds at most 2^31-1 rows");
  if (a.n == 0) return;
  require_pointer(a.residual, op, "residual");
  require_pointer(a.weight, op, "weight");
  require_pointer(a.out, op, "out");
  if (a.out == a.residual || (a.x != nullptr && a.out == a.x)) {
    invalid_argument(op, "out aliases residual or x; pass a separate output buffer");
  }

  // One thread per 4 elements up to a full block; a multiple of 32 for block_sum.
  const int threads = static_cast<int>(std::min<int64_t>(1024, ((a.hidden / 4 + 31) / 32) * 32));
  const int block = std::max(threads, 32);
  const float eps = static_cast<float>(a.eps);
  dispatch_half(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a.x);
    const T* w = static_cast<const T*>(a.weight);
    T* out = static_cast<T*>(a.out);
    if (a.residual_dtype == DType::kF32) {
      rmsnorm_residual_kernel<<<grid_dim(a.n, 1), block, 0, stream>>>(
          static_cast<float*>(a.residual), x, w, out, a.hidden, eps);
    } else {
      rmsnorm_residual_kernel<<<grid_dim(a.n, 1), block, 0, stream>>>(static_cast<T*>(a.residual),
                                                                      x, w, out, a.hidden, eps);
    }
  });
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
