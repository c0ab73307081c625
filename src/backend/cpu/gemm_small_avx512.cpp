// small_gemm for AVX-512F: 4 rows x 4 outputs of 16-float vectors (16 accumulators).
// Compiled with -mavx512f (CMakeLists.txt); called only where the CPU has it.
#include <immintrin.h>

#include "backend/cpu/gemm_small_kernel.hpp"

namespace conveyor::cpu {
namespace {

struct Avx512 {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static constexpr int kRows = 4;
  static constexpr int kOutputs = 4;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_bf16(const uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
};

}  // namespace

void small_gemm_avx512(const SmallGemmArgs& args) {
  small_gemm_isa<Avx512>(args);
}

}  // namespace conveyor::cpu
