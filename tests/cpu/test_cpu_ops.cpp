// Tests of the fp32 CPU ops against plain double-precision references written here, on awkward
// shapes, fresh random inputs each run (seed printed on failure; set CONVEYOR_TEST_SEED to
// replay) and NaN-poisoned outputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/cpu_ops.hpp"
#include "backend/kv_cache.hpp"
#include "common/test_util.hpp"
#include "conveyor/error.hpp"

namespace conveyor::cpu {
namespace {

constexpr double kTolerance = 1e-5;  // relative error norm for fp32 against double
constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

uint64_t test_seed() {
  if (const char* env = std::getenv("CONVEYOR_TEST_SEED")) return std::stoull(env);
  return std::random_device{}();
}

std::string seed_note(uint64_t seed) {
  return "seed " + std::to_string(seed) +
         " (replay with CONVEYOR_TEST_SEED=" + std::to_string(seed) + ")";
}

std::vector<float> random_vector(std::mt19937_64& rng, size_t count, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(count);
  for (float& value : v)
    value = dist(rng);
  return v;
}

std::vector<float> poisoned(size_t count) {
  return std::vector<float>(count, kPoison);
}

// ||a - b|| / ||b|| (plain ||a - b|| when b is zero); NaN anywhere makes it NaN, which fails.
double rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
    norm += b[i] * b[i];
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  return rel_error(a, std::vector<double>(b.begin(), b.end()));
}

// ---- embedding -------------------------------------------------------------------------------

TEST(CpuOps, Embedding) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int64_t vocab = 37, hidden = 19;
  const std::vector<float> table = random_vector(rng, vocab * hidden);
  for (int n_threads : {1, 2, 3}) {
    ThreadPool pool(n_threads);
    for (int64_t n : {1, 7, 33, 2000}) {
      SCOPED_TRACE(testing::Message() << "threads=" << n_threads << " n=" << n);
      std::vector<int32_t> ids(static_cast<size_t>(n));
      for (auto& id : ids)
        id = static_cast<int32_t>(rng() % vocab);
      std::vector<float> out = poisoned(n * hidden);
      embedding(table.data(), ids.data(), n, hidden, out.data(), pool);
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < hidden; ++j) {
          ASSERT_EQ(out[i * hidden + j], table[ids[i] * hidden + j]) << i << "," << j;
        }
      }
    }
  }
}

// ---- rmsnorm ---------------------------------------------------------------------------------

std::vector<double> rmsnorm_reference(const std::vector<float>& x, const std::vector<float>& w,
                                      int64_t n, int64_t hidden, double eps) {
  std::vector<double> out(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0.0;
    for (int64_t j = 0; j < hidden; ++j)
      ss += double(x[i * hidden + j]) * x[i * hidden + j];
    const double r = 1.0 / std::sqrt(ss / hidden + eps);
    for (int64_t j = 0; j < hidden; ++j)
      out[i * hidden + j] = x[i * hidden + j] * r * w[j];
  }
  return out;
}

TEST(CpuOps, RmsNorm) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (int n_threads : {1, 2, 3}) {
    ThreadPool pool(n_threads);
    for (int64_t n : {1, 7, 33}) {
      for (int64_t hidden : {16, 67, 4096}) {
        for (double eps : {1e-6, 1e-5}) {
          SCOPED_TRACE(testing::Message() << "threads=" << n_threads << " n=" << n
                                          << " hidden=" << hidden << " eps=" << eps);
          const std::vector<float> x = random_vector(rng, n * hidden, 3.0f);
          const std::vector<float> w = random_vector(rng, hidden);
          const std::vector<double> expected = rmsnorm_reference(x, w, n, hidden, eps);
          std::vector<float> out = poisoned(x.size());
          rmsnorm(x.data(), w.data(), n, hidden, eps, out.data(), pool);
          EXPECT_LE(rel_error(out, expected), kTolerance);
          // In place.
          std::vector<float> inout = x;
          rmsnorm(inout.data(), w.data(), n, hidden, eps, inout.data(), pool);
          EXPECT_EQ(inout, out);
        }
      }
    }
  }
}

TEST(CpuOps, RmsNormTinyRowsUseEps) {
  ThreadPool pool(1);
  const std::vector<float> x(8, 0.0f), w(8, 1.0f);
  std::vector<float> out = poisoned(8);
  rmsnorm(x.data(), w.data(), 1, 8, 1e-6, out.data(), pool);
  for (float v : out)
    EXPECT_EQ(v, 0.0f);
}

// ---- linear ----------------------------------------------------------------------------------

struct LinearShape {
  int64_t in, out;
};

TEST(CpuOps, Linear) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pools[] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  // Odd out sizes leave partial 16-column blocks; the larger ones split across 2-3 threads.
  const LinearShape shapes[] = {{64, 48}, {100, 37}, {64, 1000}, {257, 333}, {768, 2048}};
  for (const LinearShape& shape : shapes) {
    for (int64_t n : {1, 7, 33}) {
      for (bool with_bias : {false, true}) {
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(testing::Message() << "in=" << shape.in << " out=" << shape.out << " n=" << n
                                          << " bias=" << with_bias << " accumulate=" << accumulate);
          const std::vector<float> x = random_vector(rng, n * shape.in);
          const std::vector<float> w = random_vector(rng, shape.out * shape.in, 0.05f);
          const std::vector<float> bias = random_vector(rng, shape.out);
          const std::vector<float> y0 = random_vector(rng, n * shape.out);

          std::vector<double> expected(static_cast<size_t>(n * shape.out));
          for (int64_t r = 0; r < n; ++r) {
            for (int64_t o = 0; o < shape.out; ++o) {
              double sum = accumulate ? y0[r * shape.out + o] : 0.0;
              if (with_bias) sum += bias[o];
              for (int64_t k = 0; k < shape.in; ++k) {
                sum += double(x[r * shape.in + k]) * w[o * shape.in + k];
              }
              expected[r * shape.out + o] = sum;
            }
          }

          std::vector<float> first;
          for (ThreadPool& pool : pools) {
            SCOPED_TRACE(testing::Message() << "threads=" << pool.n_threads());
            std::vector<float> y = accumulate ? y0 : poisoned(n * shape.out);
            LinearArgs args;
            args.x = x.data();
            args.w = w.data();
            args.bias = with_bias ? bias.data() : nullptr;
            args.y = y.data();
            args.n = n;
            args.in = shape.in;
            args.out = shape.out;
            args.accumulate = accumulate;
            linear(args, pool);
            EXPECT_LE(rel_error(y, expected), kTolerance);
            if (first.empty()) {
              first = y;
            } else {
              EXPECT_LE(rel_error(y, first), 1e-6) << "results differ across thread counts";
            }
          }
        }
      }
    }
  }
}

// row_invariant: a row's result is bit-identical whatever rows share the call (40 rows at once,
// the same rows 3 or 17 at a time); without it, more than 16 rows go through OpenBLAS.
TEST(CpuOps, LinearRowInvariant) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pool(2);
  const int64_t n = 40, in = 200, out = 90;
  const std::vector<float> x = random_vector(rng, n * in);
  const std::vector<float> w = random_vector(rng, out * in);
  const std::vector<float> bias = random_vector(rng, out);
  auto run = [&](int64_t r0, int64_t rows, std::vector<float>& y) {
    linear({.x = x.data() + r0 * in,
            .w = w.data(),
            .bias = bias.data(),
            .y = y.data() + r0 * out,
            .n = rows,
            .in = in,
            .out = out,
            .row_invariant = true},
           pool);
  };
  std::vector<float> whole = poisoned(static_cast<size_t>(n * out));
  std::vector<float> pieces = poisoned(whole.size());
  run(0, n, whole);
  for (int64_t r0 = 0; r0 < n;) {
    const int64_t rows = std::min<int64_t>(r0 % 2 == 0 ? 3 : 17, n - r0);
    run(r0, rows, pieces);
    r0 += rows;
  }
  EXPECT_EQ(whole, pieces);
}

TEST(CpuOps, LinearRejectsBadArguments) {
  ThreadPool pool(1);
  std::vector<float> buffer(64, 0.0f);
  LinearArgs args;
  args.x = buffer.data();
  args.w = buffer.data();
  args.y = buffer.data();
  args.n = 1;
  args.in = 0;
  args.out = 4;
  EXPECT_THROW(linear(args, pool), Error);
  args.in = 4;
  args.w = WeightView();
  EXPECT_THROW(linear(args, pool), Error);
}

// ---- rope ------------------------------------------------------------------------------------

TEST(CpuOps, Rope) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (int n_threads : {1, 2, 3}) {
    ThreadPool pool(n_threads);
    for (int64_t n : {1, 7, 33}) {
      for (int64_t n_heads : {1, 5, 32}) {
        for (int64_t head_dim : {16, 64, 128}) {
          SCOPED_TRACE(testing::Message() << "threads=" << n_threads << " n=" << n
                                          << " n_heads=" << n_heads << " head_dim=" << head_dim);
          const int64_t half = head_dim / 2;
          std::vector<float> inv_freq(static_cast<size_t>(half));
          for (int64_t i = 0; i < half; ++i) {
            inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / head_dim));
          }
          // A decode-like run continues a cache at a random position.
          const int64_t pos0 = static_cast<int64_t>(rng() % 5000);
          std::vector<int64_t> positions(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i)
            positions[i] = pos0 + i;
          const std::vector<float> x = random_vector(rng, n * n_heads * head_dim);

          std::vector<double> expected(x.size());
          for (int64_t t = 0; t < n; ++t) {
            for (int64_t h = 0; h < n_heads; ++h) {
              const int64_t base = (t * n_heads + h) * head_dim;
              for (int64_t i = 0; i < half; ++i) {
                const double angle = double(positions[t]) * inv_freq[i];
                const double a = x[base + i], b = x[base + i + half];
                expected[base + i] = a * std::cos(angle) - b * std::sin(angle);
                expected[base + i + half] = b * std::cos(angle) + a * std::sin(angle);
              }
            }
          }
          std::vector<float> y = x;
          rope(y.data(), positions.data(), n, n_heads, head_dim, inv_freq.data(), pool);
          EXPECT_LE(rel_error(y, expected), kTolerance);
          // The same heads with rows in llama.cpp's order (pair i at 2i, 2i + 1) rotate to the
          // same values in that order, bit for bit.
          std::vector<float> adjacent(x.size());
          for (int64_t r = 0; r < n * n_heads; ++r) {
            for (int64_t i = 0; i < half; ++i) {
              adjacent[r * head_dim + 2 * i] = x[r * head_dim + i];
              adjacent[r * head_dim + 2 * i + 1] = x[r * head_dim + i + half];
            }
          }
          rope(adjacent.data(), positions.data(), n, n_heads, head_dim, inv_freq.data(), pool,
               /*adjacent_pairs=*/true);
          for (int64_t r = 0; r < n * n_heads; ++r) {
            for (int64_t i = 0; i < half; ++i) {
              ASSERT_EQ(adjacent[r * head_dim + 2 * i], y[r * head_dim + i]);
              ASSERT_EQ(adjacent[r * head_dim + 2 * i + 1], y[r * head_dim + i + half]);
            }
          }
        }
      }
    }
  }
}

// ---- attention -------------------------------------------------------------------------------

struct AttentionShape {
  int64_t n, pos0, n_heads, n_kv_heads, head_dim;
};

// Plain causal GQA attention in double. k and v hold rows [0, pos0 + n).
std::vector<double> attention_reference(const AttentionShape& s, const std::vector<float>& q,
                                        const std::vector<float>& k, const std::vector<float>& v) {
  const int64_t d = s.head_dim, group = s.n_heads / s.n_kv_heads;
  std::vector<double> out(static_cast<size_t>(s.n * s.n_heads * d), 0.0);
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t h = 0; h < s.n_heads; ++h) {
      const int64_t kvh = h / group, n_keys = s.pos0 + i + 1;
      std::vector<double> scores(static_cast<size_t>(n_keys));
      double max_score = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) {
        double dot = 0.0;
        for (int64_t c = 0; c < d; ++c) {
          dot += double(q[(i * s.n_heads + h) * d + c]) * k[(j * s.n_kv_heads + kvh) * d + c];
        }
        scores[j] = dot / std::sqrt(double(d));
        max_score = std::max(max_score, scores[j]);
      }
      double sum = 0.0;
      for (double& score : scores) {
        score = std::exp(score - max_score);
        sum += score;
      }
      for (int64_t j = 0; j < n_keys; ++j) {
        for (int64_t c = 0; c < d; ++c) {
          out[(i * s.n_heads + h) * d + c] += scores[j] / sum * v[(j * s.n_kv_heads + kvh) * d + c];
        }
      }
    }
  }
  return out;
}

void check_attention(const AttentionShape& s, float q_scale, std::mt19937_64& rng,
                     ThreadPool* pools, int n_pools) {
  SCOPED_TRACE(testing::Message() << "n=" << s.n << " pos0=" << s.pos0 << " n_heads=" << s.n_heads
                                  << " n_kv_heads=" << s.n_kv_heads << " head_dim=" << s.head_dim
                                  << " q_scale=" << q_scale);
  const int64_t n_rows = s.pos0 + s.n;
  const int64_t kv_row = s.n_kv_heads * s.head_dim;
  const std::vector<float> q = random_vector(rng, s.n * s.n_heads * s.head_dim, q_scale);
  std::vector<float> k = random_vector(rng, n_rows * kv_row);
  std::vector<float> v = random_vector(rng, n_rows * kv_row);
  const std::vector<double> expected = attention_reference(s, q, k, v);
  // The cache is head-major with room for 3 more rows per head; rows past pos0 + n (capacity
  // not yet written) are poisoned: reading them is a bug.
  const int64_t d = s.head_dim, head_stride = (n_rows + 3 + kKeyTile - 1) / kKeyTile * kKeyTile * d;
  // Keys in transposed tiles (key_offset), values as rows, as the KV cache stores them.
  auto head_major = [&](const std::vector<float>& rows, bool keys) {
    std::vector<float> cache(static_cast<size_t>(s.n_kv_heads * head_stride), kPoison);
    for (int64_t j = 0; j < n_rows; ++j)
      for (int64_t h = 0; h < s.n_kv_heads; ++h)
        for (int64_t c = 0; c < d; ++c)
          cache[static_cast<size_t>(h * head_stride + (keys ? key_offset(j, c, d) : j * d + c))] =
              rows[static_cast<size_t>((j * s.n_kv_heads + h) * d + c)];
    return cache;
  };
  k = head_major(k, true);
  v = head_major(v, false);

  std::vector<float> first;
  for (int p = 0; p < n_pools; ++p) {
    SCOPED_TRACE(testing::Message() << "threads=" << pools[p].n_threads());
    std::vector<float> out = poisoned(q.size());
    AttentionArgs args;
    args.q = q.data();
    args.k = k.data();
    args.v = v.data();
    args.out = out.data();
    args.n = s.n;
    args.pos0 = s.pos0;
    args.n_heads = s.n_heads;
    args.n_kv_heads = s.n_kv_heads;
    args.head_dim = s.head_dim;
    args.kv_head_stride = head_stride;
    attention(args, pools[p]);
    EXPECT_LE(rel_error(out, expected), kTolerance);
    if (first.empty()) {
      first = out;
    } else {
      EXPECT_EQ(out, first) << "results differ across thread counts";
    }
  }
}

TEST(CpuOps, Attention) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pools[] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  // GQA ratios 1, 4 and 8.
  const std::pair<int64_t, int64_t> heads[] = {{4, 4}, {8, 2}, {16, 2}};
  for (int64_t n : {1, 7, 33}) {
    for (int64_t pos0 : {0, 5, 100}) {
      for (const auto& [n_heads, n_kv_heads] : heads) {
        for (int64_t head_dim : {16, 64, 128}) {
          check_attention({n, pos0, n_heads, n_kv_heads, head_dim}, 1.0f, rng, pools, 3);
        }
      }
    }
  }
}

TEST(CpuOps, AttentionLargeScoresStayFinite) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pools[] = {ThreadPool(2)};
  // Scores in the hundreds overflow exp() without the max subtraction.
  check_attention({7, 20, 8, 1, 64}, 60.0f, rng, pools, 1);
  // A long decode context.
  check_attention({1, 3000, 8, 2, 128}, 1.0f, rng, pools, 1);
}

// The blocked paths: several query and key tiles (the GEMM path), key splits whose last range
// holds no visible key for some rows, and a kv head stride too small for the context.
TEST(CpuOps, AttentionTiles) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pools[] = {ThreadPool(1), ThreadPool(2), ThreadPool(3)};
  check_attention({300, 0, 8, 2, 64}, 1.0f, rng, pools, 3);
  check_attention({130, 517, 6, 3, 32}, 1.0f, rng, pools, 3);
  check_attention({70, 1000, 4, 1, 32}, 4.0f, rng, pools, 2);
  check_attention({5, 2046, 8, 2, 64}, 1.0f, rng, pools, 3);
  check_attention({1, 1024, 3, 1, 16}, 1.0f, rng, pools, 3);
  check_attention({1, 1500, 3, 1, 64}, 1.0f, rng, pools, 3);  // an odd row count, split

  std::vector<float> buf(64 * 16, 0.0f);
  AttentionArgs args{.q = buf.data(),
                     .k = buf.data(),
                     .v = buf.data(),
                     .out = buf.data(),
                     .n = 2,
                     .pos0 = 3,
                     .n_heads = 2,
                     .n_kv_heads = 1,
                     .head_dim = 16,
                     .kv_head_stride = 4 * 16};
  test::expect_invalid([&] { attention(args, pools[0]); }, {"kv_head_stride (64)"});
}

// A token's output is bit-identical whatever chunk it is computed in: block and split
// boundaries sit at fixed key positions and no kernel's sums depend on the other rows (so a
// request's greedy output does not change with the chunking or the load around it).
TEST(CpuOps, AttentionDoesNotDependOnChunking) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  ThreadPool pool(2);
  for (const auto& shape :
       {std::tuple<int64_t, int64_t, int64_t>{9, 3, 64}, {8, 2, 128}, {4, 4, 16}}) {
    // Plain variables: clang cannot capture structured bindings in a lambda before C++20's P1091.
    const int64_t n_heads = std::get<0>(shape), n_kv_heads = std::get<1>(shape),
                  head_dim = std::get<2>(shape);
    SCOPED_TRACE(testing::Message()
                 << "heads " << n_heads << "/" << n_kv_heads << " head_dim " << head_dim);
    const int64_t n = 1300, q_row = n_heads * head_dim, head_stride = 1312 * head_dim;
    const std::vector<float> q = random_vector(rng, n * q_row, 3.0f);
    const std::vector<float> k = random_vector(rng, n_kv_heads * head_stride);
    const std::vector<float> v = random_vector(rng, n_kv_heads * head_stride);
    auto run = [&](int64_t begin, int64_t end, std::vector<float>& out) {
      attention({.q = q.data() + begin * q_row,
                 .k = k.data(),
                 .v = v.data(),
                 .out = out.data() + begin * q_row,
                 .n = end - begin,
                 .pos0 = begin,
                 .n_heads = n_heads,
                 .n_kv_heads = n_kv_heads,
                 .head_dim = head_dim,
                 .kv_head_stride = head_stride},
                pool);
    };
    std::vector<float> whole = poisoned(q.size()), chunked = poisoned(q.size());
    run(0, n, whole);
    // Chunks that cross query-block, key-block and split boundaries, then single tokens.
    const int64_t cuts[] = {0, 7, 100, 101, 300, 1023, 1025, 1290, 1291, 1292, n};
    for (size_t c = 0; c + 1 < std::size(cuts); ++c)
      run(cuts[c], cuts[c + 1], chunked);
    EXPECT_EQ(whole, chunked);
  }
}

// ---- swiglu ----------------------------------------------------------------------------------

TEST(CpuOps, SwiGlu) {
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (int n_threads : {1, 2, 3}) {
    ThreadPool pool(n_threads);
    for (int64_t count : {1, 7, 33, 100003}) {
      SCOPED_TRACE(testing::Message() << "threads=" << n_threads << " count=" << count);
      std::vector<float> gate = random_vector(rng, count, 4.0f);
      const std::vector<float> up = random_vector(rng, count);
      if (count > 2) {
        gate[0] = -200.0f;  // exp(200) overflows to inf: silu must still give -0
        gate[1] = 200.0f;
      }
      std::vector<double> expected(static_cast<size_t>(count));
      for (int64_t j = 0; j < count; ++j) {
        const double g = gate[j];
        expected[j] = g / (1.0 + std::exp(-g)) * up[j];
      }
      std::vector<float> out = poisoned(count);
      swiglu(gate.data(), up.data(), count, out.data(), pool);
      EXPECT_LE(rel_error(out, expected), kTolerance);
      // In place over gate.
      swiglu(gate.data(), up.data(), count, gate.data(), pool);
      EXPECT_EQ(gate, out);
    }
  }
}

}  // namespace
}  // namespace conveyor::cpu
