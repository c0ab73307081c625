// Small-batch matrix products of the CPU backend: y[r, o] += x[r, :] · w[o, :] for a few rows r
// (decode steps, short chunks), reading each weight once from memory — no packing of w, which
// for a handful of rows would cost more memory traffic than the product itself. Weights are
// fp32 or bf16 (widened in registers); accumulation is fp32. Kernels for AVX-512, AVX2 + FMA
// and plain C++ are all compiled in; the best one the running CPU supports is picked at run time.
#pragma once

#include <cstdint>
#include <string_view>

namespace conveyor::cpu {

enum class WeightType : uint8_t { kF32, kBF16 };

// A weight matrix as the CPU kernels read it: fp32 values, or bf16 widened on the fly.
struct WeightView {
  const void* data = nullptr;
  WeightType type = WeightType::kF32;

  WeightView() = default;
  WeightView(const float* p) : data(p), type(WeightType::kF32) {}      // NOLINT: implicit by design
  WeightView(const uint16_t* p) : data(p), type(WeightType::kBF16) {}  // NOLINT
};

struct SmallGemmArgs {
  const float* x = nullptr;  // [n, in], rows `in` apart
  const void* w = nullptr;   // [out, in] of `wtype`, rows `in` apart
  WeightType wtype = WeightType::kF32;
  float* y = nullptr;  // [n, ldy]; y[r, o] += ... (the caller sets bias or zeros first)
  int64_t n = 0, in = 0, ldy = 0;
  int64_t o0 = 0, o1 = 0;  // the output columns to compute
};

// Every (row, output) sum runs over k in the same order whatever n and [o0, o1) are, so a row's
// result does not depend on the rows or the column slice it is computed with.
void small_gemm(const SmallGemmArgs& args);

enum class Isa : uint8_t { kScalar, kAvx2, kAvx512 };
// The kernel set small_gemm() uses on this CPU; "avx512", "avx2" or "scalar".
Isa small_gemm_isa();
std::string_view to_string(Isa isa);

// The same product with a chosen kernel set (tests compare them); throws
// conveyor::Error(kInvalidArgument) when this CPU cannot run it.
void small_gemm_with(Isa isa, const SmallGemmArgs& args);

// Rows of x up to which linear() prefers small_gemm over a packed GEMM.
inline constexpr int64_t kSmallGemmMaxRows = 16;

}  // namespace conveyor::cpu
