// Sampling: greedy ties, temperature/top-k/top-p behaviour and reproducibility.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "backend/sampler.hpp"
#include "conveyor/error.hpp"

namespace conveyor {
namespace {

TEST(Sampler, GreedyTiesGoToLowestId) {
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  EXPECT_EQ(argmax(logits), 1);
  EXPECT_EQ(sample_token(logits, {}, 0), 1);
  logits[0] = NAN;
  EXPECT_EQ(argmax(logits), 1);
  std::vector<float> all_nan = {NAN, NAN};
  EXPECT_THROW(argmax(all_nan), Error);
}

TEST(Sampler, TopKOneIsGreedy) {
  std::vector<float> logits = {0.1f, 0.3f, 3.0f, 0.2f};
  SamplingParams p{.temperature = 5.0, .top_k = 1, .seed = 9};
  for (int64_t pos = 0; pos < 50; ++pos)
    EXPECT_EQ(sample_token(logits, p, pos), 2);
}

TEST(Sampler, TopPKeepsSmallestNucleus) {
  // Probabilities at temperature 1: ~[0.665, 0.245, 0.090] -> top_p 0.6 keeps only token 0,
  // top_p 0.8 keeps tokens 0 and 1 but never 2.
  std::vector<float> logits = {2.0f, 1.0f, 0.0f};
  SamplingParams p{.temperature = 1.0, .top_p = 0.6, .seed = 1};
  for (int64_t pos = 0; pos < 100; ++pos)
    EXPECT_EQ(sample_token(logits, p, pos), 0);
  p.top_p = 0.8;
  std::map<int32_t, int> counts;
  for (int64_t pos = 0; pos < 2000; ++pos)
    counts[sample_token(logits, p, pos)]++;
  EXPECT_EQ(counts[2], 0);
  EXPECT_GT(counts[1], 300);  // expected ~0.27 of 2000
  EXPECT_GT(counts[0], 1200);
}

TEST(Sampler, TemperatureMatchesSoftmaxFrequencies) {
  std::vector<float> logits = {1.0f, 0.0f};
  SamplingParams p{.temperature = 0.5, .seed = 42};
  int ones = 0;
  const int n = 20000;
  for (int64_t pos = 0; pos < n; ++pos)
    ones += sample_token(logits, p, pos) == 0;
  const double expected = 1.0 / (1.0 + std::exp(-2.0));  // softmax([2, 0])[0]
  EXPECT_NEAR(static_cast<double>(ones) / n, expected, 0.015);
}

TEST(Sampler, ReproducibleBySeedAndPosition) {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i)
    logits[i] = std::sin(static_cast<float>(i));
  SamplingParams a{.temperature = 1.0, .top_k = 50, .top_p = 0.95, .seed = 7};
  SamplingParams b = a;
  b.seed = 8;
  int differ = 0;
  for (int64_t pos = 0; pos < 200; ++pos) {
    EXPECT_EQ(sample_token(logits, a, pos), sample_token(logits, a, pos));
    differ += sample_token(logits, a, pos) != sample_token(logits, b, pos);
  }
  EXPECT_GT(differ, 50);
}

TEST(Sampler, ValidateNamesTheField) {
  auto message = [](SamplingParams p) {
    try {
      p.validate();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message({.temperature = -1}).find("temperature is -1"), std::string::npos);
  EXPECT_NE(message({.top_k = -3}).find("top_k is -3"), std::string::npos);
  EXPECT_NE(message({.top_p = 0.0}).find("top_p is 0"), std::string::npos);
  EXPECT_NE(message({.top_p = 1.5}).find("top_p is 1.5"), std::string::npos);
  EXPECT_EQ(message({.temperature = 0.7, .top_k = 40, .top_p = 0.9}), "");
}

}  // namespace
}  // namespace conveyor
