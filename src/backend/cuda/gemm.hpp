// Gemm: y[n, out] = x[n, in] . W^T (+ y) through cuBLASLt, for 16-bit weights in the Hugging Face
// [out, in] row-major orientation, fp32 compute. Owns its cuBLASLt handle and workspace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "backend/cuda/cuda_raii.hpp"
#include "conveyor/dtype.hpp"

struct cublasLtContext;

namespace conveyor::cuda {

struct GemmArgs {
  DType dtype = DType::kBF16;    // of x and w: kBF16 or kF16
  DType y_dtype = DType::kBF16;  // kF32 or dtype
  const void* x = nullptr;       // [n, in] row-major (device)
  const void* w = nullptr;       // [out, in] row-major (device)
  void* y = nullptr;             // [n, out] row-major (device)
  int64_t n = 0, in = 0, out = 0;
  bool accumulate = false;  // y += x w^T (beta = 1: the residual add fused into the GEMM)
};

// One per stage device context (no global handle). Not thread-safe: used by the stage's worker
// only. The device is the one current when the Gemm is constructed; run() must be called with
// that device current and a stream of it. Every call is asynchronous on `stream`; the workspace
// is shared by the calls, so calls on different streams must be ordered by the caller.
class Gemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = 32u << 20;
  // Cached plans at most; the cache starts over when full.
  static constexpr size_t kMaxPlans = 1024;

  // Creates the cuBLASLt handle and allocates the workspace; throws conveyor::Error (kDevice or
  // kOutOfMemory) when either fails.
  explicit Gemm(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Gemm();  // never throws; logs a failure to free
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Validates `args` (throws kInvalidArgument before any CUDA call), then enqueues the GEMM.
  // n == 0 is a no-op. Pointers 16-byte aligned give the fastest kernels (any alignment works).
  void run(const GemmArgs& args, cudaStream_t stream);

  size_t workspace_bytes() const { return workspace_bytes_; }
  size_t cached_plans() const { return plans_.size(); }

 private:
  // Heuristic results cached per problem (shape, dtypes, beta, pointer alignment), at most
  // kMaxPlans.
  struct Plan;
  using PlanKey = std::tuple<int64_t, int64_t, int64_t, int, int, bool, int>;
  const Plan& plan_for(const GemmArgs& args, int alignment);

  DeviceBuffer workspace_;  // before the handle: freed after it
  size_t workspace_bytes_ = 0;
  cublasLtContext* handle_ = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

// Throws kInvalidArgument for bad shapes, dtypes or null pointers (no CUDA call); used by run().
void validate_gemm(const GemmArgs& args);

}  // namespace conveyor::cuda
