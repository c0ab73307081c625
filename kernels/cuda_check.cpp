// The kernel layer's checking helper: CUDA and cuBLAS results to conveyor::Error.
#include "kernels/cuda_check.hpp"

namespace conveyor::kernels {

void check_result(cudaError_t result, const char* call, const char* file, int line) {
  if (result == cudaSuccess) return;
  const ErrorCode code =
      result == cudaErrorMemoryAllocation ? ErrorCode::kOutOfMemory : ErrorCode::kDevice;
  throw Error(code, concat(call, " failed: ", cudaGetErrorName(result), " (",
                           cudaGetErrorString(result), ") at ", file, ":", line));
}

void check_result(cublasStatus_t result, const char* call, const char* file, int line) {
  if (result == CUBLAS_STATUS_SUCCESS) return;
  const ErrorCode code =
      result == CUBLAS_STATUS_ALLOC_FAILED ? ErrorCode::kOutOfMemory : ErrorCode::kDevice;
  throw Error(code, concat(call, " failed: ", cublasGetStatusName(result), " (",
                           cublasGetStatusString(result), ") at ", file, ":", line));
}

}  // namespace conveyor::kernels
