// Random-weight fill: element i of a tensor is random_weight(key, i, mean, half_width) rounded to
// the tensor's 16-bit dtype, the values the host draws (core/random_bits.hpp) rounded as a
// checkpoint's fp32 values are on upload.
#include "core/random_bits.hpp"
#include "kernels/common.cuh"

namespace conveyor::kernels {

namespace {

constexpr int kThreads = 256;
// Grid-stride: enough blocks to fill an H100/H200 several times over, few enough to launch fast.
constexpr int64_t kMaxBlocks = 4096;

template <typename T>
__global__ void random_fill_kernel(T* __restrict__ out, int64_t numel, uint64_t key, float mean,
                                   float half_width) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    out[i] = from_float<T>(random_weight(key, static_cast<uint64_t>(i), mean, half_width));
  }
}

}  // namespace

void launch_random_fill(const RandomFillArgs& a, cudaStream_t stream) {
  const char* op = "launch_random_fill";
  require_half_dtype(a.dtype, op, "dtype");
  require_non_negative(a.numel, op, "numel");
  if (a.numel == 0) return;
  require_pointer(a.out, op, "out");
  const unsigned int blocks = grid_dim(a.numel, kThreads) < kMaxBlocks
                                  ? grid_dim(a.numel, kThreads)
                                  : static_cast<unsigned int>(kMaxBlocks);
  dispatch_half(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    random_fill_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<T*>(a.out), a.numel, a.key,
                                                        a.mean, a.half_width);
  });
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
