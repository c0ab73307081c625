// Host-side helpers of the kernel layer: the one checking helper for CUDA and cuBLAS results
// (names the call, file and line) and the argument checks every launcher runs before any CUDA
// call. Host C++ only (no fmt: nvcc's C++20 mode rejects fmt 9's consteval format strings).
#pragma once

#include <cublas_api.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>

#include "conveyor/dtype.hpp"
#include "conveyor/error.hpp"

namespace conveyor::kernels {

// Throws conveyor::Error(kDevice) — or kOutOfMemory for allocation failures — when `result`
// is not success. Use through CONVEYOR_CUDA_CHECK so the call, file and line are named.
void check_result(cudaError_t result, const char* call, const char* file, int line);
void check_result(cublasStatus_t result, const char* call, const char* file, int line);

// Concatenates the arguments with operator<< (the kernel layer's tiny formatter).
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream stream;
  (stream << ... << std::forward<Parts>(parts));
  return stream.str();
}

// Throws conveyor::Error(kInvalidArgument) with "<op>: <message parts>".
template <typename... Parts>
[[noreturn]] void invalid_argument(const char* op, Parts&&... parts) {
  throw Error(ErrorCode::kInvalidArgument, concat(op, ": ", std::forward<Parts>(parts)...));
}

inline void require_pointer(const void* p, const char* op, const char* name) {
  if (p == nullptr)
    invalid_argument(op, name, " is null; pass a device buffer of the documented shape");
}

// Vectorized kernels load 16 bytes at a time.
inline void require_aligned(const void* p, std::size_t alignment, const char* op,
                            const char* name) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0) {
    invalid_argument(op, name, " (", p, ") is not ", alignment,
                     "-byte aligned; pass a buffer from cudaMalloc or an aligned offset into one");
  }
}

inline void require_non_negative(int64_t value, const char* op, const char* name) {
  if (value < 0) invalid_argument(op, name, " is ", value, " but must be >= 0");
}

inline void require_positive(int64_t value, const char* op, const char* name) {
  if (value <= 0) invalid_argument(op, name, " is ", value, " but must be > 0");
}

// Activations and weights of the CUDA backend are 16-bit floats.
inline void require_half_dtype(DType dtype, const char* op, const char* name) {
  if (dtype != DType::kBF16 && dtype != DType::kF16) {
    invalid_argument(op, name, " is ", dtype_name(dtype), " but must be BF16 or F16");
  }
}

// A row stride of 0 means packed; otherwise it must hold a whole row.
inline int64_t resolve_stride(int64_t stride, int64_t row, const char* op, const char* name) {
  if (stride == 0) return row;
  if (stride < row) invalid_argument(op, name, " is ", stride, " but a row has ", row, " elements");
  return stride;
}

}  // namespace conveyor::kernels

#define CONVEYOR_CUDA_CHECK(call) \
  ::conveyor::kernels::check_result((call), #call, __FILE__, __LINE__)
