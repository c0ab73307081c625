// SwiGLU: out = silu(gate) * up, elementwise in fp32.
#include "kernels/common.cuh"

namespace conveyor::kernels {

// grid (ceil(inter / 256), n), block 256.
template <typename T>
__global__ void swiglu_kernel(const T* gate,             // [n, inter] (gate_stride); may alias out
                              const T* __restrict__ up,  // [n, inter] (up_stride)
                              T* out,                    // [n, inter] (out_stride)
                              int64_t inter, int64_t gate_stride, int64_t up_stride,
                              int64_t out_stride) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = blockIdx.y;
  if (j >= inter) return;
  const float g = to_float(gate[row * gate_stride + j]);
  const float u = to_float(up[row * up_stride + j]);
  out[row * out_stride + j] = from_float<T>(g / (1.0f + expf(-g)) * u);
}

void launch_swiglu(const SwigluArgs& a, cudaStream_t stream) {
  const char* op = "launch_swiglu";
  require_half_dtype(a.dtype, op, "dtype");
  require_non_negative(a.n, op, "n");
  require_positive(a.inter, op, "inter");
  if (a.n > 65535) invalid_argument(op, "n is ", a.n, " but at most 65535 rows per launch");
  const int64_t gate_stride = resolve_stride(a.gate_stride, a.inter, op, "gate_stride");
  const int64_t up_stride = resolve_stride(a.up_stride, a.inter, op, "up_stride");
  const int64_t out_stride = resolve_stride(a.out_stride, a.inter, op, "out_stride");
  if (a.n == 0) return;
  require_pointer(a.gate, op, "gate");
  require_pointer(a.up, op, "up");
  require_pointer(a.out, op, "out");
  if (a.out == a.gate && out_stride != gate_stride) {
    invalid_argument(op, "out aliases gate with out_stride ", out_stride, " != gate_stride ",
                     gate_stride, "; rows would overwrite unread inputs");
  }

  dispatch_half(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(grid_dim(a.inter, 256), static_cast<unsigned int>(a.n));
    swiglu_kernel<<<grid, 256, 0, stream>>>(static_cast<const T*>(a.gate),
                                            static_cast<const T*>(a.up), static_cast<T*>(a.out),
                                            a.inter, gate_stride, up_stride, out_stride);
  });
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
