// The small-batch product kernel, written once over a vector "ISA" type (see gemm_small.hpp).
// Included only by the per-ISA translation units (gemm_small_avx512.cpp, gemm_small_avx2.cpp),
// each compiled with its own target flags; everything here has internal linkage so no code built
// for one ISA can be picked by the linker for another.
#pragma once

#include <cstdint>
#include <type_traits>

#include "backend/cpu/gemm_small.hpp"

namespace conveyor::cpu {
namespace {

// Reads the weight element of row `o`, column `k`, widened to fp32 (the scalar k tail).
inline float weight_at(const SmallGemmArgs& a, int64_t o, int64_t k) {
  if (a.wtype == WeightType::kF32) return static_cast<const float*>(a.w)[o * a.in + k];
  const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(a.w)[o * a.in + k])
                        << 16;
  float f;
  __builtin_memcpy(&f, &bits, sizeof f);
  return f;
}

// How far ahead of the reads each weight row is prefetched. The rows of one tile are a few KiB
// each and read side by side, which the hardware prefetchers follow poorly; 16 KiB ahead (into
// the next tiles' rows) measured fastest on a Xeon with AVX-512 (~17 GB/s on one core, against
// ~12.5 without).
constexpr int64_t kPrefetchBytes = 16 * 1024;

// A tile of NR rows x NO outputs: NR*NO vector accumulators over the vector-width part of k,
// then one horizontal sum each, plus the scalar tail. The k order of every (row, output) sum is
// the same for every tile shape.
template <typename Isa, bool kBf16, int NR, int NO>
inline void tile(const SmallGemmArgs& a, int64_t r0, int64_t o0) {
  using V = typename Isa::V;
  constexpr int64_t W = Isa::kWidth;
  const int64_t in = a.in;
  const int64_t vec_end = in - in % W;
  V acc[NR][NO];
  for (int i = 0; i < NR; ++i) {
    for (int j = 0; j < NO; ++j)
      acc[i][j] = Isa::zero();
  }
  const float* x = a.x + r0 * in;
  using T = std::conditional_t<kBf16, uint16_t, float>;
  const T* rows = static_cast<const T*>(a.w) + o0 * in;
  for (int64_t k = 0; k < vec_end; k += W) {
    V w[NO];
    for (int j = 0; j < NO; ++j) {
      const T* p = rows + j * in + k;
      // A hint only: addresses past the matrix do not fault.
      __builtin_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes, 0, 3);
      if constexpr (kBf16) {
        w[j] = Isa::load_bf16(p);
      } else {
        w[j] = Isa::load(p);
      }
    }
    for (int i = 0; i < NR; ++i) {
      const V xv = Isa::load(x + i * in + k);
      for (int j = 0; j < NO; ++j)
        acc[i][j] = Isa::fma(xv, w[j], acc[i][j]);
    }
  }
  for (int i = 0; i < NR; ++i) {
    for (int j = 0; j < NO; ++j) {
      float sum = Isa::hsum(acc[i][j]);
      for (int64_t k = vec_end; k < in; ++k)
        sum += x[i * in + k] * weight_at(a, o0 + j, k);
      a.y[(r0 + i) * a.ldy + o0 + j] += sum;
    }
  }
}

template <typename Isa, bool kBf16, int NR>
inline void row_tiles(const SmallGemmArgs& a, int64_t r0) {
  constexpr int kNo = Isa::kOutputs;
  int64_t o = a.o0;
  for (; o + kNo <= a.o1; o += kNo)
    tile<Isa, kBf16, NR, kNo>(a, r0, o);
  for (; o < a.o1; ++o)
    tile<Isa, kBf16, NR, 1>(a, r0, o);
}

// Outputs in groups of Isa::kOutputs; for each, rows in groups of Isa::kRows. The group's weight
// rows stay in L1 while every row group reads them, so w streams from memory once.
template <typename Isa, bool kBf16>
inline void run(const SmallGemmArgs& a) {
  constexpr int kNr = Isa::kRows;
  constexpr int kNo = Isa::kOutputs;
  for (int64_t o = a.o0; o < a.o1; o += kNo) {
    const int64_t o_end = o + kNo < a.o1 ? o + kNo : a.o1;
    SmallGemmArgs part = a;
    part.o0 = o;
    part.o1 = o_end;
    int64_t r = 0;
    for (; r + kNr <= a.n; r += kNr)
      row_tiles<Isa, kBf16, kNr>(part, r);
    switch (a.n - r) {
      case 1:
        row_tiles<Isa, kBf16, 1>(part, r);
        break;
      case 2:
        if constexpr (kNr > 2) row_tiles<Isa, kBf16, 2>(part, r);
        break;
      case 3:
        if constexpr (kNr > 3) row_tiles<Isa, kBf16, 3>(part, r);
        break;
      default:
        break;
    }
  }
}

template <typename Isa>
inline void small_gemm_isa(const SmallGemmArgs& a) {
  if (a.wtype == WeightType::kBF16) {
    run<Isa, true>(a);
  } else {
    run<Isa, false>(a);
  }
}

}  // namespace
}  // namespace conveyor::cpu
