// small_gemm dispatch (the best kernel set this CPU runs, chosen once) and the portable kernel.
#include "backend/cpu/gemm_small.hpp"

#include "core/check.hpp"
#include "core/dtype_convert.hpp"

namespace conveyor::cpu {

// In gemm_small_avx512.cpp / gemm_small_avx2.cpp, built with their own target flags.
void small_gemm_avx512(const SmallGemmArgs& args);
void small_gemm_avx2(const SmallGemmArgs& args);

namespace {

float weight_f32(const SmallGemmArgs& a, int64_t o, int64_t k) {
  if (a.wtype == WeightType::kF32) return static_cast<const float*>(a.w)[o * a.in + k];
  return bf16_to_f32(static_cast<const uint16_t*>(a.w)[o * a.in + k]);
}

// Portable: 8 lanes of partial sums per (row, output), combined in a fixed order.
void small_gemm_scalar(const SmallGemmArgs& a) {
  constexpr int64_t kLanes = 8;
  for (int64_t o = a.o0; o < a.o1; ++o) {
    for (int64_t r = 0; r < a.n; ++r) {
      const float* x = a.x + r * a.in;
      float lanes[kLanes] = {};
      int64_t k = 0;
      for (; k + kLanes <= a.in; k += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l)
          lanes[l] += x[k + l] * weight_f32(a, o, k + l);
      }
      float sum = 0.0f;
      for (int64_t l = 0; l < kLanes; ++l)
        sum += lanes[l];
      for (; k < a.in; ++k)
        sum += x[k] * weight_f32(a, o, k);
      a.y[r * a.ldy + o] += sum;
    }
  }
}

bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
#if defined(__x86_64__)
      return __builtin_cpu_supports("avx512f");
#else
      return false;
#endif
    case Isa::kAvx2:
#if defined(__x86_64__)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
    case Isa::kScalar:
      break;
  }
  return true;
}

Isa detect() {
  if (cpu_has(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_has(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

void run(Isa isa, const SmallGemmArgs& args) {
  switch (isa) {
    case Isa::kAvx512:
      small_gemm_avx512(args);
      return;
    case Isa::kAvx2:
      small_gemm_avx2(args);
      return;
    case Isa::kScalar:
      break;
  }
  small_gemm_scalar(args);
}

}  // namespace

Isa small_gemm_isa() {
  static const Isa isa = detect();
  return isa;
}

std::string_view to_string(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kScalar:
      break;
  }
  return "scalar";
}

void small_gemm(const SmallGemmArgs& args) {
  run(small_gemm_isa(), args);
}

void small_gemm_with(Isa isa, const SmallGemmArgs& args) {
  if (!cpu_has(isa)) {
    fail(ErrorCode::kInvalidArgument, "this CPU cannot run the {} kernels of small_gemm",
         to_string(isa));
  }
  run(isa, args);
}

}  // namespace conveyor::cpu
