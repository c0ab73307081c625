// Embedding gather: rows of a 16-bit table to activations (fp32 or the table's dtype).
#include <cmath>

#include "kernels/common.cuh"

namespace conveyor::kernels {

// grid (n), block 256: block i copies row ids[i]; an id out of range writes NaN.
template <typename T, typename Out>
__global__ void embedding_kernel(const T* __restrict__ table,      // [vocab, hidden]
                                 const int32_t* __restrict__ ids,  // [n]
                                 Out* __restrict__ out,            // [n, hidden]
                                 int64_t vocab, int64_t hidden) {
  const int64_t i = blockIdx.x;
  const int32_t id = ids[i];
  Out* row_out = out + i * hidden;
  if (id < 0 || id >= vocab) {
    for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
      row_out[j] = from_float<Out>(NAN);
    return;
  }
  const T* row = table + static_cast<int64_t>(id) * hidden;
  for (int64_t j = threadIdx.x; j < hidden; j += blockDim.x)
    row_out[j] = from_float<Out>(to_float(row[j]));
}

void launch_embedding(const EmbeddingArgs& a, cudaStream_t stream) {
  const char* op = "launch_embedding";
  require_half_dtype(a.dtype, op, "dtype");
  if (a.out_dtype != DType::kF32 && a.out_dtype != a.dtype) {
    invalid_argument(op, "out_dtype is ", dtype_name(a.out_dtype), " but must be F32 or ",
                     dtype_name(a.dtype), " (the table's dtype)");
  }
  require_non_negative(a.n, op, "n");
  require_positive(a.vocab, op, "vocab");
  require_positive(a.hidden, op, "hidden");
  if (a.vocab > INT32_MAX) invalid_argument(op, "vocab is ", a.vocab, " but ids are int32");
  if (a.n > INT32_MAX)
    invalid_argument(op, "n is ", a.n, " but the grid holds at most 2^31-1 rows");
  if (a.n == 0) return;
  require_pointer(a.table, op, "table");
  require_pointer(a.ids, op, "ids");
  require_pointer(a.out, op, "out");

  dispatch_half(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* table = static_cast<const T*>(a.table);
    if (a.out_dtype == DType::kF32) {
      embedding_kernel<<<grid_dim(a.n, 1), 256, 0, stream>>>(
          table, a.ids, static_cast<float*>(a.out), a.vocab, a.hidden);
    } else {
      embedding_kernel<<<grid_dim(a.n, 1), 256, 0, stream>>>(table, a.ids, static_cast<T*>(a.out),
                                                             a.vocab, a.hidden);
    }
  });
  CONVEYOR_CUDA_CHECK(cudaGetLastError());
}

}  // namespace conveyor::kernels
