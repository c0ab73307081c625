// small_gemm for AVX2 + FMA: 2 rows x 4 outputs of 8-float vectors (8 accumulators, within the
// 16 ymm registers). Compiled with -mavx2 -mfma (CMakeLists.txt); called only where the CPU has
// them.
#include <immintrin.h>

#include "backend/cpu/gemm_small_kernel.hpp"

namespace conveyor::cpu {
namespace {

struct Avx2 {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static constexpr int kRows = 2;
  static constexpr int kOutputs = 4;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_bf16(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(V v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  }
};

}  // namespace

void small_gemm_avx2(const SmallGemmArgs& args) {
  small_gemm_isa<Avx2>(args);
}

}  // namespace conveyor::cpu
