// small_gemm: every kernel set this CPU runs (AVX-512, AVX2, portable) against a double-precision
// reference, fp32 and bf16 weights, odd shapes (k tails, output and row remainders), column
// slices; and a row's result does not depend on the rows or slice it is computed with.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/gemm_small.hpp"
#include "common/test_util.hpp"
#include "core/dtype_convert.hpp"

namespace conveyor::cpu {
namespace {

struct Problem {
  int64_t n, in, out;
  std::vector<float> x, w32, y0;
  std::vector<uint16_t> w16;
};

Problem make(int64_t n, int64_t in, int64_t out, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p{n, in, out, {}, {}, {}, {}};
  for (int64_t i = 0; i < n * in; ++i)
    p.x.push_back(normal(rng));
  for (int64_t i = 0; i < out * in; ++i) {
    const float v = normal(rng) * 0.1f;
    p.w16.push_back(f32_to_bf16(v));
    p.w32.push_back(v);
  }
  for (int64_t i = 0; i < n * out; ++i)
    p.y0.push_back(normal(rng));  // y is accumulated into
  return p;
}

std::vector<Isa> available() {
  std::vector<Isa> isas = {Isa::kScalar};
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    try {
      const float x = 1.0f, w = 1.0f;
      float y = 0.0f;
      small_gemm_with(isa,
                      {.x = &x, .w = &w, .y = &y, .n = 1, .in = 1, .ldy = 1, .o0 = 0, .o1 = 1});
      isas.push_back(isa);
    } catch (const Error&) {
    }
  }
  return isas;
}

TEST(SmallGemm, EveryKernelMatchesADoubleReference) {
  const std::vector<Isa> isas = available();
  SCOPED_TRACE(testing::Message() << "chosen: " << to_string(small_gemm_isa()));
  for (const WeightType wtype : {WeightType::kF32, WeightType::kBF16}) {
    for (const auto& [n, in, out] : std::vector<std::array<int64_t, 3>>{
             {1, 576, 64}, {4, 576, 36}, {5, 100, 7}, {16, 1536, 20}, {3, 17, 9}, {7, 8, 5}}) {
      const Problem p = make(n, in, out, static_cast<uint32_t>(n * 131 + in + out));
      // The reference, with the weights as the kernel sees them.
      std::vector<double> want(static_cast<size_t>(n * out));
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t o = 0; o < out; ++o) {
          double sum = p.y0[static_cast<size_t>(r * out + o)];
          for (int64_t k = 0; k < in; ++k) {
            const size_t wi = static_cast<size_t>(o * in + k);
            const double w = wtype == WeightType::kF32 ? p.w32[wi] : bf16_to_f32(p.w16[wi]);
            sum += static_cast<double>(p.x[static_cast<size_t>(r * in + k)]) * w;
          }
          want[static_cast<size_t>(r * out + o)] = sum;
        }
      }
      for (const Isa isa : isas) {
        SCOPED_TRACE(testing::Message() << to_string(isa) << " n=" << n << " in=" << in << " out="
                                        << out << " bf16=" << (wtype == WeightType::kBF16));
        std::vector<float> y = p.y0;
        // Two column slices, as linear() hands them to threads.
        const int64_t mid = out / 2;
        for (const auto& [o0, o1] : {std::pair{int64_t{0}, mid}, std::pair{mid, out}}) {
          small_gemm_with(isa,
                          {.x = p.x.data(),
                           .w = wtype == WeightType::kF32 ? static_cast<const void*>(p.w32.data())
                                                          : p.w16.data(),
                           .wtype = wtype,
                           .y = y.data(),
                           .n = n,
                           .in = in,
                           .ldy = out,
                           .o0 = o0,
                           .o1 = o1});
        }
        for (size_t i = 0; i < y.size(); ++i) {
          const double tol = 1e-5 * (1.0 + std::sqrt(static_cast<double>(in)));
          ASSERT_NEAR(y[i], want[i], tol) << "element " << i;
        }
      }
    }
  }
}

// Row r of a 13-row product equals the same row computed alone, bit for bit: a request's logits
// do not depend on what else is in its micro-batch.
TEST(SmallGemm, ARowIsTheSameWhateverItIsBatchedWith) {
  const Problem p = make(13, 576, 40, 9);
  std::vector<float> all(static_cast<size_t>(13 * 40), 0.0f);
  small_gemm({.x = p.x.data(),
              .w = p.w32.data(),
              .y = all.data(),
              .n = 13,
              .in = 576,
              .ldy = 40,
              .o0 = 0,
              .o1 = 40});
  for (int64_t r = 0; r < 13; ++r) {
    std::vector<float> one(40, 0.0f);
    small_gemm({.x = p.x.data() + r * 576,
                .w = p.w32.data(),
                .y = one.data(),
                .n = 1,
                .in = 576,
                .ldy = 40,
                .o0 = 0,
                .o1 = 40});
    for (int64_t o = 0; o < 40; ++o)
      ASSERT_EQ(one[static_cast<size_t>(o)], all[static_cast<size_t>(r * 40 + o)]) << r << "," << o;
  }
}

}  // namespace
}  // namespace conveyor::cpu
