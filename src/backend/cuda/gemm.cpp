// Gemm over cuBLASLt: row-major y = x W^T computed as the column-major y^T = W x^T ("TN").
#include "backend/cuda/gemm.hpp"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

using kernels::check_result;

namespace {

cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
  }
  return CUDA_R_32F;
}

// Largest power of two (<= 256) dividing the address: tells the heuristic which kernels fit.
int alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  int alignment = 256;
  while (alignment > 1 && address % static_cast<std::uintptr_t>(alignment) != 0)
    alignment /= 2;
  return alignment;
}

}  // namespace

void validate_gemm(const GemmArgs& a) {
  const char* op = "Gemm::run";
  kernels::require_half_dtype(a.dtype, op, "dtype");
  if (a.y_dtype != DType::kF32 && a.y_dtype != a.dtype) {
    kernels::invalid_argument(op, "y_dtype is ", dtype_name(a.y_dtype), " but must be F32 or ",
                              dtype_name(a.dtype));
  }
  kernels::require_non_negative(a.n, op, "n");
  kernels::require_positive(a.in, op, "in");
  kernels::require_positive(a.out, op, "out");
  if (a.n > INT32_MAX || a.in > INT32_MAX || a.out > INT32_MAX) {
    kernels::invalid_argument(op, "n, in, out are ", a.n, ", ", a.in, ", ", a.out,
                              " but cuBLASLt layouts take 32-bit sizes here; split the GEMM");
  }
  if (a.n == 0) return;
  kernels::require_pointer(a.x, op, "x");
  kernels::require_pointer(a.w, op, "w");
  kernels::require_pointer(a.y, op, "y");
}

// The descriptors and the algorithm chosen for one problem.
struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    // Destructors never throw: report and go on.
    const cublasStatus_t results[] = {
        a != nullptr ? cublasLtMatrixLayoutDestroy(a) : CUBLAS_STATUS_SUCCESS,
        b != nullptr ? cublasLtMatrixLayoutDestroy(b) : CUBLAS_STATUS_SUCCESS,
        c != nullptr ? cublasLtMatrixLayoutDestroy(c) : CUBLAS_STATUS_SUCCESS,
        desc != nullptr ? cublasLtMatmulDescDestroy(desc) : CUBLAS_STATUS_SUCCESS};
    for (cublasStatus_t result : results) {
      if (result != CUBLAS_STATUS_SUCCESS) {
        spdlog::warn("Gemm: destroying a cuBLASLt descriptor failed: {}",
                     cublasGetStatusName(result));
      }
    }
  }
};

Gemm::Gemm(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  if (workspace_bytes_ > 0) {
    int device = 0;
    CONVEYOR_CUDA_CHECK(cudaGetDevice(&device));
    workspace_ = DeviceBuffer(device, workspace_bytes_, "the cuBLASLt workspace");
  }
  CONVEYOR_CUDA_CHECK(cublasLtCreate(&handle_));
}

Gemm::~Gemm() {
  plans_.clear();
  // The workspace member frees itself (cudaFree waits for in-flight GEMMs first).
  if (handle_ != nullptr) {
    const cublasStatus_t result = cublasLtDestroy(handle_);
    if (result != CUBLAS_STATUS_SUCCESS) {
      spdlog::warn("Gemm: cublasLtDestroy failed: {}", cublasGetStatusName(result));
    }
  }
}

const Gemm::Plan& Gemm::plan_for(const GemmArgs& args, int alignment) {
  const PlanKey key{args.n,
                    args.in,
                    args.out,
                    static_cast<int>(args.dtype),
                    static_cast<int>(args.y_dtype),
                    args.accumulate,
                    alignment};
  if (auto it = plans_.find(key); it != plans_.end()) return *it->second;

  auto plan = std::make_unique<Plan>();
  const cudaDataType_t ab_type = cuda_type(args.dtype);
  const cudaDataType_t c_type = cuda_type(args.y_dtype);
  CONVEYOR_CUDA_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major view: A = W stored [in, out] (ld in), used transposed -> [out, in];
  // B = x stored [in, n] (ld in); C = y stored [out, n] (ld out).
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  CONVEYOR_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                     &trans_a, sizeof trans_a));
  CONVEYOR_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                     &trans_b, sizeof trans_b));
  const auto n = static_cast<uint64_t>(args.n), in = static_cast<uint64_t>(args.in),
             out = static_cast<uint64_t>(args.out);
  CONVEYOR_CUDA_CHECK(
      cublasLtMatrixLayoutCreate(&plan->a, ab_type, in, out, static_cast<int64_t>(in)));
  CONVEYOR_CUDA_CHECK(
      cublasLtMatrixLayoutCreate(&plan->b, ab_type, in, n, static_cast<int64_t>(in)));
  CONVEYOR_CUDA_CHECK(
      cublasLtMatrixLayoutCreate(&plan->c, c_type, out, n, static_cast<int64_t>(out)));

  cublasLtMatmulPreference_t preference = nullptr;
  CONVEYOR_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const uint64_t workspace = workspace_bytes_;
  const uint32_t align = static_cast<uint32_t>(alignment);
  cublasLtMatmulHeuristicResult_t result{};
  int n_results = 0;
  cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace);
  for (auto attribute :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    if (status == CUBLAS_STATUS_SUCCESS) {
      status = cublasLtMatmulPreferenceSetAttribute(preference, attribute, &align, sizeof align);
    }
  }
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b, plan->c, plan->c,
                                            preference, 1, &result, &n_results);
  }
  cublasLtMatmulPreferenceDestroy(preference);
  CONVEYOR_CUDA_CHECK(status);
  if (n_results == 0) {
    throw Error(ErrorCode::kDevice,
                kernels::concat("Gemm: cuBLASLt has no algorithm for n=", args.n, " in=", args.in,
                                " out=", args.out, " ", dtype_name(args.dtype), " -> ",
                                dtype_name(args.y_dtype), " (alignment ", alignment,
                                " bytes); check the dtypes and the workspace size"));
  }
  plan->algo = result.algo;
  // Bounded: every distinct row count (prefill chunks, decode batch sizes) is a new key, and a
  // long-running engine must not grow without limit. Dropping them all is simplest and cheap:
  // a plan is one heuristic query, and graphs already captured keep their own copies.
  if (plans_.size() >= kMaxPlans) plans_.clear();
  return *plans_.emplace(key, std::move(plan)).first->second;
}

void Gemm::run(const GemmArgs& args, cudaStream_t stream) {
  validate_gemm(args);
  if (args.n == 0) return;
  int alignment = alignment_of(args.x);
  for (const void* p : {args.w, static_cast<const void*>(args.y)}) {
    const int a = alignment_of(p);
    if (a < alignment) alignment = a;
  }
  const Plan& plan = plan_for(args, alignment);
  const float alpha = 1.0f, beta = args.accumulate ? 1.0f : 0.0f;
  // beta == 0: cuBLASLt does not read C, so a NaN-poisoned y is fine.
  CONVEYOR_CUDA_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, args.w, plan.a, args.x, plan.b,
                                     &beta, args.y, plan.c, args.y, plan.c, &plan.algo,
                                     workspace_.get(), workspace_bytes_, stream));
}

}  // namespace conveyor::cuda
