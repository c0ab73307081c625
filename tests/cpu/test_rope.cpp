// Tests of rope_inv_freq (plain, linear and llama3 scaling) and hand-computed cases of the
// cpu::rope rotation.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "backend/cpu/cpu_ops.hpp"
#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"
#include "model/rope.hpp"

namespace conveyor {
namespace {

ModelConfig rope_config(double theta, int64_t head_dim) {
  ModelConfig config;
  config.rope_theta = theta;
  config.head_dim = head_dim;
  return config;
}

// Llama 3.1's rope_scaling.
ModelConfig llama31_config() {
  ModelConfig config = rope_config(500000.0, 128);
  config.rope_scaling.type = RopeScalingType::kLlama3;
  config.rope_scaling.factor = 8.0;
  config.rope_scaling.low_freq_factor = 1.0;
  config.rope_scaling.high_freq_factor = 4.0;
  config.rope_scaling.original_max_position_embeddings = 8192;
  return config;
}

TEST(RopeInvFreq, PlainTheta10000HeadDim8) {
  const std::vector<float> inv_freq = rope_inv_freq(rope_config(10000.0, 8));
  // 10000^(-2i/8) = 10^(-i).
  const std::vector<float> expected = {1.0f, 0.1f, 0.01f, 0.001f};
  ASSERT_EQ(inv_freq.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_FLOAT_EQ(inv_freq[i], expected[i]) << i;
}

TEST(RopeInvFreq, LinearScalingDividesEveryFrequency) {
  ModelConfig config = rope_config(10000.0, 8);
  config.rope_scaling.type = RopeScalingType::kLinear;
  config.rope_scaling.factor = 4.0;
  const std::vector<float> inv_freq = rope_inv_freq(config);
  const std::vector<float> expected = {0.25f, 0.025f, 0.0025f, 0.00025f};
  ASSERT_EQ(inv_freq.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i)
    EXPECT_FLOAT_EQ(inv_freq[i], expected[i]) << i;
}

TEST(RopeInvFreq, Llama3ScalingThreeRegimes) {
  const std::vector<float> inv_freq = rope_inv_freq(llama31_config());
  ASSERT_EQ(inv_freq.size(), 64u);
  // Wavelength boundaries: 8192 / 4 = 2048 (high) and 8192 / 1 = 8192 (low); with
  // base_i = 500000^(-i/64), pairs 0..28 have wavelength 2*pi/base_i < 2048, pairs 29..34 lie
  // between, and pairs 35..63 exceed 8192.
  auto base = [](int i) { return std::pow(500000.0, -static_cast<double>(i) / 64.0); };

  // High frequencies are unchanged: pair 0 has inv_freq 1, pair 10 500000^(-10/64).
  EXPECT_FLOAT_EQ(inv_freq[0], 1.0f);
  EXPECT_FLOAT_EQ(inv_freq[10], 0.12868737343265052f);
  EXPECT_FLOAT_EQ(inv_freq[28], static_cast<float>(base(28)));  // wavelength 1956.5 < 2048

  // Low frequencies are divided by 8: pair 35 (wavelength 8218.7 > 8192), 50, 63.
  EXPECT_FLOAT_EQ(inv_freq[35], static_cast<float>(base(35) / 8.0));
  EXPECT_FLOAT_EQ(inv_freq[50], 4.411534674558404e-06f);  // 3.529227739646723e-05 / 8
  EXPECT_FLOAT_EQ(inv_freq[63], static_cast<float>(base(63) / 8.0));

  // In between, a blend: pair 31 has wavelength 2*pi/0.0017360467 = 3619.249, so
  // smooth = (8192/3619.249 - 1) / (4 - 1) = 0.421151 and
  // inv = (1 - smooth) * 0.0017360467 / 8 + smooth * 0.0017360467 = 8.5675141e-4.
  EXPECT_FLOAT_EQ(inv_freq[31], 8.567514129196321e-04f);
  const double wavelen29 = 2.0 * std::numbers::pi / base(29);
  const double smooth29 = (8192.0 / wavelen29 - 1.0) / 3.0;
  EXPECT_GT(smooth29, 0.0);
  EXPECT_LT(smooth29, 1.0);
  EXPECT_FLOAT_EQ(inv_freq[29],
                  static_cast<float>((1.0 - smooth29) * base(29) / 8.0 + smooth29 * base(29)));

  // Every pair lies in exactly one regime, and frequencies still decrease with i.
  for (int i = 1; i < 64; ++i)
    EXPECT_LT(inv_freq[i], inv_freq[i - 1]) << i;
  for (int i = 0; i <= 28; ++i)
    EXPECT_FLOAT_EQ(inv_freq[i], static_cast<float>(base(i))) << i;
  for (int i = 35; i < 64; ++i) {
    EXPECT_FLOAT_EQ(inv_freq[i], static_cast<float>(base(i) / 8.0)) << i;
  }
  for (int i = 29; i <= 34; ++i) {
    EXPECT_LT(inv_freq[i], static_cast<float>(base(i))) << i;
    EXPECT_GT(inv_freq[i], static_cast<float>(base(i) / 8.0)) << i;
  }
}

TEST(RopeInvFreq, RejectsBadConfigs) {
  auto expect_invalid = [](const ModelConfig& config) {
    try {
      (void)rope_inv_freq(config);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    }
  };
  expect_invalid(rope_config(10000.0, 7));
  expect_invalid(rope_config(10000.0, 0));
  expect_invalid(rope_config(0.0, 8));
  ModelConfig config = llama31_config();
  config.rope_scaling.high_freq_factor = 1.0;  // equal to low: the blend divides by zero
  expect_invalid(config);
  config = rope_config(10000.0, 8);
  config.rope_scaling.type = RopeScalingType::kLinear;
  config.rope_scaling.factor = 0.0;
  expect_invalid(config);
}

TEST(RopeOp, PositionZeroIsIdentity) {
  cpu::ThreadPool pool(2);
  const int64_t n = 3, n_heads = 2, head_dim = 8;
  std::vector<float> x(static_cast<size_t>(n * n_heads * head_dim));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = 0.5f + static_cast<float>(i);
  const std::vector<float> original = x;
  const std::vector<int64_t> positions(static_cast<size_t>(n), 0);
  const std::vector<float> inv_freq = rope_inv_freq(rope_config(10000.0, head_dim));
  cpu::rope(x.data(), positions.data(), n, n_heads, head_dim, inv_freq.data(), pool);
  EXPECT_EQ(x, original);
}

TEST(RopeOp, RotatesPairsByKnownAngles) {
  cpu::ThreadPool pool(1);
  // head_dim 4: pairs (x0, x2) and (x1, x3). With inv_freq {pi/2, pi} position 1 rotates the
  // first pair by 90 degrees, (1, 3) -> (-3, 1), and the second by 180, (2, 4) -> (-2, -4);
  // position 2 rotates them by 180 and 360 degrees.
  const float pi = static_cast<float>(std::numbers::pi);
  const std::vector<float> inv_freq = {pi / 2.0f, pi};
  std::vector<float> x = {1, 2, 3, 4, 1, 2, 3, 4};
  const std::vector<int64_t> positions = {1, 2};
  cpu::rope(x.data(), positions.data(), 2, 1, 4, inv_freq.data(), pool);
  const std::vector<float> expected = {-3, -2, 1, -4, -1, 2, -3, 4};
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(x[i], expected[i], 1e-5) << i;

  // A 30 degree rotation: (1, 0) -> (cos 30, sin 30).
  const std::vector<float> inv_freq30 = {pi / 6.0f};
  std::vector<float> y = {1, 0};
  const int64_t position = 1;
  cpu::rope(y.data(), &position, 1, 1, 2, inv_freq30.data(), pool);
  EXPECT_NEAR(y[0], std::sqrt(3.0) / 2.0, 1e-6);
  EXPECT_NEAR(y[1], 0.5, 1e-6);
}

}  // namespace
}  // namespace conveyor
