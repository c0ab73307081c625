// Device-side helpers shared by the kernels: 16-bit float loads/stores in fp32, warp and block
// reductions, and the dtype dispatch of the launchers. Included by kernels/*.cu only.
#pragma once

#include <cuda_bf16.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <type_traits>

#include <cstdint>

#include "kernels/cuda_check.hpp"
#include "kernels/kernels.hpp"

namespace conveyor::kernels {

// ---- element conversions ---------------------------------------------------------------------

__device__ __forceinline__ float to_float(float x) {
  return x;
}
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float to_float(__half x) {
  return __half2float(x);
}

// Round-to-nearest-even conversions from fp32 (NaN stays NaN), matching the host converters.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}

// ---- reductions ------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory. Fixed order, so deterministic.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int n_warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

// ---- dtype dispatch --------------------------------------------------------------------------

// Calls fn(T{}) with T the CUDA type of a 16-bit DType (validated by the launcher before).
template <typename Fn>
void dispatch_half(DType dtype, Fn&& fn) {
  if (dtype == DType::kBF16) {
    fn(__nv_bfloat16{});
  } else {
    fn(__half{});
  }
}

// Calls fn(T{}, std::integral_constant<int, D>{}) for the 16-bit type of `dtype` and a head_dim
// the attention kernels support (64 or 128; the launchers validate it first).
template <typename Fn>
void dispatch_half_head_dim(DType dtype, int64_t head_dim, Fn&& fn) {
  dispatch_half(dtype, [&](auto tag) {
    if (head_dim == 64) {
      fn(tag, std::integral_constant<int, 64>{});
    } else {
      fn(tag, std::integral_constant<int, 128>{});
    }
  });
}

inline unsigned int grid_dim(int64_t work, int64_t per_block) {
  return static_cast<unsigned int>((work + per_block - 1) / per_block);
}

}  // namespace conveyor::kernels
