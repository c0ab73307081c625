// Parity of every CUDA kernel (and the cuBLASLt Gemm) with the fp32 CPU ops on awkward shapes:
// fresh random inputs each run (CONVEYOR_TEST_SEED replays), inputs rounded to 16 bits before
// the CPU reference sees them, NaN-poisoned outputs and NaN-poisoned cache rows that must not
// be read, judged by relative error norms. Without a device every test here skips with the
// reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "backend/cpu/cpu_ops.hpp"
#include "backend/cuda/gemm.hpp"
#include "backend/sampler.hpp"
#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"
#include "core/random_bits.hpp"
#include "gpu/gpu_test_util.hpp"
#include "kernels/kernels.hpp"
#include "model/rope.hpp"

namespace conveyor {
namespace {

using namespace gpu_testing;  // the helpers of tests/gpu/gpu_test_util.hpp

// ---- embedding -------------------------------------------------------------------------------

TEST(KernelParity, Embedding) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const int64_t vocab = 1001, hidden = 523;
  for (DType dtype : kHalfTypes) {
    const std::vector<float> table = rounded(random_vector(rng, vocab * hidden), dtype);
    Bits table_d(to_bits(table, dtype));
    for (int64_t n : {1, 7, 33}) {
      SCOPED_TRACE(::testing::Message() << name(dtype) << " n=" << n);
      std::vector<int32_t> ids(static_cast<size_t>(n));
      for (auto& id : ids)
        id = static_cast<int32_t>(rng() % vocab);
      ids[0] = static_cast<int32_t>(vocab - 1);
      DeviceBuffer<int32_t> ids_d(ids);
      std::vector<float> expected(static_cast<size_t>(n * hidden), kNaN);
      cpu::embedding(table.data(), ids.data(), n, hidden, expected.data(), pool());

      DeviceBuffer<float> out32(static_cast<size_t>(n * hidden));
      out32.poison();
      kernels::EmbeddingArgs a{dtype,       DType::kF32, table_d.get(), ids_d.get(),
                               out32.get(), n,           vocab,         hidden};
      kernels::launch_embedding(a, nullptr);
      Bits out16(static_cast<size_t>(n * hidden));
      out16.poison();
      a.out_dtype = dtype;
      a.out = out16.get();
      kernels::launch_embedding(a, nullptr);
      sync();
      EXPECT_EQ(relative_error(out32.download(), expected), 0.0);
      EXPECT_EQ(relative_error(download_float(out16, dtype), expected), 0.0);
    }
  }
}

// ---- RMSNorm + residual ----------------------------------------------------------------------

TEST(KernelParity, RmsNormResidual) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  const double eps = 1e-5;
  for (DType dtype : kHalfTypes) {
    for (DType residual_dtype : {DType::kF32, dtype}) {
      for (int64_t hidden : {64, 1000, 4096}) {
        for (int64_t n : {1, 5, 17}) {
          for (bool with_x : {true, false}) {
            SCOPED_TRACE(::testing::Message()
                         << name(dtype) << " residual " << dtype_name(residual_dtype)
                         << " hidden=" << hidden << " n=" << n << " x=" << with_x);
            const size_t count = static_cast<size_t>(n * hidden);
            std::vector<float> residual = random_vector(rng, count, 3.0f);
            if (residual_dtype != DType::kF32) residual = rounded(residual, dtype);
            const std::vector<float> x = rounded(random_vector(rng, count), dtype);
            const std::vector<float> weight =
                rounded(random_vector(rng, static_cast<size_t>(hidden), 0.5f), dtype);

            std::vector<float> expected_residual = residual;
            if (with_x) {
              for (size_t i = 0; i < count; ++i)
                expected_residual[i] += x[i];
              if (residual_dtype != DType::kF32)
                expected_residual = rounded(expected_residual, dtype);
            }
            std::vector<float> expected(count, kNaN);
            cpu::rmsnorm(expected_residual.data(), weight.data(), n, hidden, eps, expected.data(),
                         pool());

            DeviceBuffer<float> residual32(count);
            Bits residual16(count);
            if (residual_dtype == DType::kF32) {
              residual32.upload(residual);
            } else {
              residual16.upload(to_bits(residual, dtype));
            }
            Bits x_d(to_bits(x, dtype)), w_d(to_bits(weight, dtype)), out(count);
            out.poison();
            kernels::RmsNormArgs a;
            a.dtype = dtype;
            a.residual_dtype = residual_dtype;
            a.residual = residual_dtype == DType::kF32 ? static_cast<void*>(residual32.get())
                                                       : static_cast<void*>(residual16.get());
            a.x = with_x ? x_d.get() : nullptr;
            a.weight = w_d.get();
            a.out = out.get();
            a.n = n, a.hidden = hidden, a.eps = eps;
            kernels::launch_rmsnorm_residual(a, nullptr);
            sync();
            EXPECT_LE(relative_error(download_float(out, dtype), expected), tolerance(dtype));
            if (residual_dtype == DType::kF32) {
              EXPECT_LE(relative_error(residual32.download(), expected_residual), 1e-7);
            } else {
              EXPECT_LE(relative_error(download_float(residual16, dtype), expected_residual), 1e-7);
            }
          }
        }
      }
    }
  }
}

// ---- RoPE + bias -----------------------------------------------------------------------------

TEST(KernelParity, RopeWithBias) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  struct Heads {
    int64_t n_heads, n_kv_heads;
  };
  for (DType dtype : kHalfTypes) {
    for (int64_t head_dim : {64, 128}) {
      ModelConfig config;
      config.head_dim = head_dim;
      config.rope_theta = 500000.0;
      config.rope_scaling.type = RopeScalingType::kLlama3;
      config.rope_scaling.factor = 8.0;
      const std::vector<float> inv_freq = rope_inv_freq(config);
      DeviceBuffer<float> inv_freq_d(inv_freq);
      for (Heads heads : {Heads{4, 4}, Heads{8, 2}, Heads{16, 2}}) {
        for (int64_t n : {1, 7, 33}) {
          for (bool bias : {false, true}) {
            for (bool fused : {false, true}) {
              SCOPED_TRACE(::testing::Message()
                           << name(dtype) << " head_dim=" << head_dim << " heads=" << heads.n_heads
                           << "/" << heads.n_kv_heads << " n=" << n << " bias=" << bias
                           << " fused=" << fused);
              const int64_t q_dim = heads.n_heads * head_dim, kv_dim = heads.n_kv_heads * head_dim;
              // Fused: one [n, q_dim + 2 kv_dim] QKV buffer; else three packed buffers laid
              // end to end in the same allocation.
              const int64_t row = q_dim + 2 * kv_dim;
              std::vector<float> qkv =
                  rounded(random_vector(rng, static_cast<size_t>(n * row)), dtype);
              std::vector<int32_t> positions(static_cast<size_t>(n));
              for (auto& p : positions)
                p = static_cast<int32_t>(rng() % 131072);
              positions[0] = 0;
              std::vector<int64_t> positions64(positions.begin(), positions.end());
              const std::vector<float> bias_all =
                  rounded(random_vector(rng, static_cast<size_t>(row), 0.5f), dtype);

              auto offset_q = [&](int64_t i) { return fused ? i * row : i * q_dim; };
              auto offset_k = [&](int64_t i) {
                return fused ? i * row + q_dim : n * q_dim + i * kv_dim;
              };
              auto offset_v = [&](int64_t i) {
                return fused ? i * row + q_dim + kv_dim : n * (q_dim + kv_dim) + i * kv_dim;
              };
              // CPU reference: packed q, k, v with the bias added in fp32.
              std::vector<float> q(static_cast<size_t>(n * q_dim)),
                  k(static_cast<size_t>(n * kv_dim)), v(static_cast<size_t>(n * kv_dim));
              for (int64_t i = 0; i < n; ++i) {
                for (int64_t j = 0; j < q_dim; ++j)
                  q[i * q_dim + j] = qkv[offset_q(i) + j] + (bias ? bias_all[j] : 0.0f);
                for (int64_t j = 0; j < kv_dim; ++j) {
                  k[i * kv_dim + j] = qkv[offset_k(i) + j] + (bias ? bias_all[q_dim + j] : 0.0f);
                  v[i * kv_dim + j] =
                      qkv[offset_v(i) + j] + (bias ? bias_all[q_dim + kv_dim + j] : 0.0f);
                }
              }
              cpu::rope(q.data(), positions64.data(), n, heads.n_heads, head_dim, inv_freq.data(),
                        pool());
              cpu::rope(k.data(), positions64.data(), n, heads.n_kv_heads, head_dim,
                        inv_freq.data(), pool());

              Bits qkv_d(to_bits(qkv, dtype)), bias_d(to_bits(bias_all, dtype));
              DeviceBuffer<int32_t> positions_d(positions);
              uint16_t* base = qkv_d.get();
              kernels::RopeArgs a;
              a.dtype = dtype;
              a.q = base + offset_q(0);
              a.k = base + offset_k(0);
              a.v = base + offset_v(0);
              if (bias) {
                a.q_bias = bias_d.get();
                a.k_bias = bias_d.get() + q_dim;
                a.v_bias = bias_d.get() + q_dim + kv_dim;
              }
              a.positions = positions_d.get();
              a.inv_freq = inv_freq_d.get();
              a.n = n, a.n_heads = heads.n_heads, a.n_kv_heads = heads.n_kv_heads;
              a.head_dim = head_dim;
              if (fused) a.q_stride = a.k_stride = a.v_stride = row;
              kernels::launch_rope(a, nullptr);
              sync();
              const std::vector<float> got = download_float(qkv_d, dtype);
              std::vector<float> got_q(q.size()), got_k(k.size()), got_v(v.size());
              for (int64_t i = 0; i < n; ++i) {
                std::copy_n(got.begin() + offset_q(i), q_dim, got_q.begin() + i * q_dim);
                std::copy_n(got.begin() + offset_k(i), kv_dim, got_k.begin() + i * kv_dim);
                std::copy_n(got.begin() + offset_v(i), kv_dim, got_v.begin() + i * kv_dim);
              }
              EXPECT_LE(relative_error(got_q, q), tolerance(dtype));
              EXPECT_LE(relative_error(got_k, k), tolerance(dtype));
              EXPECT_LE(relative_error(got_v, v), tolerance(dtype));
            }
          }
        }
      }
    }
  }
}

// ---- SwiGLU ----------------------------------------------------------------------------------

TEST(KernelParity, Swiglu) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : kHalfTypes) {
    for (int64_t inter : {100, 1376}) {
      for (int64_t n : {1, 7, 33}) {
        for (bool in_place : {false, true}) {
          SCOPED_TRACE(::testing::Message() << name(dtype) << " inter=" << inter << " n=" << n
                                            << " in_place=" << in_place);
          // Fused gate_up buffer [n, 2 * inter]: gate = cols [0, inter), up = [inter, 2 inter).
          const std::vector<float> gate_up =
              rounded(random_vector(rng, static_cast<size_t>(n * 2 * inter), 2.0f), dtype);
          std::vector<float> gate(static_cast<size_t>(n * inter)), up(gate.size());
          for (int64_t i = 0; i < n; ++i) {
            std::copy_n(gate_up.begin() + i * 2 * inter, inter, gate.begin() + i * inter);
            std::copy_n(gate_up.begin() + i * 2 * inter + inter, inter, up.begin() + i * inter);
          }
          std::vector<float> expected(gate.size(), kNaN);
          cpu::swiglu(gate.data(), up.data(), n * inter, expected.data(), pool());

          Bits buffer(to_bits(gate_up, dtype)), out(gate.size());
          out.poison();
          kernels::SwigluArgs a;
          a.dtype = dtype;
          a.gate = buffer.get();
          a.up = buffer.get() + inter;
          a.n = n, a.inter = inter;
          a.gate_stride = a.up_stride = 2 * inter;
          if (in_place) {
            a.out = buffer.get();
            a.out_stride = 2 * inter;
          } else {
            a.out = out.get();
          }
          kernels::launch_swiglu(a, nullptr);
          sync();
          std::vector<float> got;
          if (in_place) {
            const std::vector<float> all = download_float(buffer, dtype);
            got.resize(gate.size());
            for (int64_t i = 0; i < n; ++i)
              std::copy_n(all.begin() + i * 2 * inter, inter, got.begin() + i * inter);
          } else {
            got = download_float(out, dtype);
          }
          EXPECT_LE(relative_error(got, expected), tolerance(dtype));
        }
      }
    }
  }
}

// ---- KV append -------------------------------------------------------------------------------

TEST(KernelParity, KvAppend) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : kHalfTypes) {
    for (int64_t kv_dim : {64 * 2, 128 * 8, 36}) {  // 36: the element-wise path
      SCOPED_TRACE(::testing::Message() << name(dtype) << " kv_dim=" << kv_dim);
      const int64_t max_seqs = 3, capacity = 40, n = 9;
      const int64_t seq_stride = capacity * kv_dim;
      const size_t cache_size = static_cast<size_t>(max_seqs * seq_stride);
      const std::vector<float> k_old = rounded(random_vector(rng, cache_size), dtype);
      const std::vector<float> v_old = rounded(random_vector(rng, cache_size), dtype);
      // New rows from a fused QKV-like buffer (src_stride > kv_dim).
      const int64_t src_stride = kv_dim * 3;
      const std::vector<float> src =
          rounded(random_vector(rng, static_cast<size_t>(n * src_stride)), dtype);
      std::vector<int32_t> slots(static_cast<size_t>(n)), positions(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        slots[i] = static_cast<int32_t>(i % max_seqs);
        positions[i] = static_cast<int32_t>(5 + i / max_seqs * 11);  // distinct per slot
      }
      std::vector<float> k_expected = k_old, v_expected = v_old;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t dst = slots[i] * seq_stride + positions[i] * kv_dim;
        std::copy_n(src.begin() + i * src_stride, kv_dim, k_expected.begin() + dst);
        std::copy_n(src.begin() + i * src_stride + kv_dim, kv_dim, v_expected.begin() + dst);
      }
      Bits k_cache(to_bits(k_old, dtype)), v_cache(to_bits(v_old, dtype)),
          src_d(to_bits(src, dtype));
      DeviceBuffer<int32_t> slots_d(slots), positions_d(positions);
      kernels::KvAppendArgs a;
      a.dtype = dtype;
      a.k_new = src_d.get();
      a.v_new = src_d.get() + kv_dim;
      a.k_cache = k_cache.get();
      a.v_cache = v_cache.get();
      a.slots = slots_d.get();
      a.positions = positions_d.get();
      a.n = n, a.kv_dim = kv_dim, a.seq_stride = seq_stride, a.src_stride = src_stride;
      kernels::launch_kv_append(a, nullptr);
      sync();
      EXPECT_EQ(relative_error(download_float(k_cache, dtype), k_expected), 0.0);
      EXPECT_EQ(relative_error(download_float(v_cache, dtype), v_expected), 0.0);
    }
  }
}

// ---- attention -------------------------------------------------------------------------------

struct AttentionShape {
  int64_t n_heads, n_kv_heads;  // GQA ratios 1, 4, 8
};
constexpr AttentionShape kAttentionShapes[] = {{4, 4}, {8, 2}, {16, 2}};

TEST(KernelParity, PrefillAttention) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  struct Chunk {
    int64_t n, pos0;
  };
  for (DType dtype : kHalfTypes) {
    for (int64_t head_dim : {64, 128}) {
      for (AttentionShape shape : kAttentionShapes) {
        for (Chunk chunk : {Chunk{1, 0}, Chunk{37, 0}, Chunk{65, 0}, Chunk{100, 30}, Chunk{13, 200},
                            Chunk{130, 67}}) {
          for (bool strided_q : {false, true}) {
            SCOPED_TRACE(::testing::Message()
                         << name(dtype) << " head_dim=" << head_dim << " heads=" << shape.n_heads
                         << "/" << shape.n_kv_heads << " n=" << chunk.n << " pos0=" << chunk.pos0
                         << " strided_q=" << strided_q);
            const int64_t n = chunk.n, pos0 = chunk.pos0, n_keys = pos0 + n;
            const int64_t q_dim = shape.n_heads * head_dim, kv_dim = shape.n_kv_heads * head_dim;
            const int64_t q_stride = strided_q ? q_dim + 2 * kv_dim : q_dim;
            const int64_t capacity = n_keys + 3;  // rows past n_keys are NaN: never read
            std::vector<float> q_rows =
                rounded(random_vector(rng, static_cast<size_t>(n * q_stride)), dtype);
            std::vector<float> k =
                rounded(random_vector(rng, static_cast<size_t>(capacity * kv_dim)), dtype);
            std::vector<float> v =
                rounded(random_vector(rng, static_cast<size_t>(capacity * kv_dim)), dtype);
            std::fill(k.begin() + n_keys * kv_dim, k.end(), kNaN);
            std::fill(v.begin() + n_keys * kv_dim, v.end(), kNaN);
            std::vector<float> q(static_cast<size_t>(n * q_dim));
            for (int64_t i = 0; i < n; ++i)
              std::copy_n(q_rows.begin() + i * q_stride, q_dim, q.begin() + i * q_dim);

            std::vector<float> expected(static_cast<size_t>(n * q_dim), kNaN);
            cpu::AttentionArgs ca;
            ca.q = q.data(), ca.k = k.data(), ca.v = v.data(), ca.out = expected.data();
            ca.n = n, ca.pos0 = pos0, ca.n_heads = shape.n_heads, ca.n_kv_heads = shape.n_kv_heads;
            ca.head_dim = head_dim;
            cpu::attention(ca, pool());

            Bits q_d(to_bits(q_rows, dtype)), k_d(to_bits(k, dtype)), v_d(to_bits(v, dtype));
            Bits out(expected.size());
            out.poison();
            kernels::PrefillAttentionArgs a;
            a.dtype = dtype;
            a.q = q_d.get(), a.k = k_d.get(), a.v = v_d.get(), a.out = out.get();
            a.n = n, a.pos0 = pos0, a.n_heads = shape.n_heads, a.n_kv_heads = shape.n_kv_heads;
            a.head_dim = head_dim;
            a.q_stride = strided_q ? q_stride : 0;
            kernels::launch_prefill_attention(a, nullptr);
            sync();
            EXPECT_LE(relative_error(download_float(out, dtype), expected), tolerance(dtype));
          }
        }
      }
    }
  }
}

TEST(KernelParity, DecodeAttention) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (DType dtype : kHalfTypes) {
    for (int64_t head_dim : {64, 128}) {
      for (AttentionShape shape : kAttentionShapes) {
        for (int64_t keys_per_split : {0, 32, 96}) {
          SCOPED_TRACE(::testing::Message()
                       << name(dtype) << " head_dim=" << head_dim << " heads=" << shape.n_heads
                       << "/" << shape.n_kv_heads << " keys_per_split=" << keys_per_split);
          const int64_t n_seqs = 5, max_seqs = 6, capacity = 1030;
          const int64_t q_dim = shape.n_heads * head_dim, kv_dim = shape.n_kv_heads * head_dim;
          const int64_t seq_stride = capacity * kv_dim;
          // Awkward lengths: 1, one under/over a split, not a tile multiple, near capacity.
          std::vector<int32_t> lengths = {1, 257, 1000, 33, 0};
          lengths[4] = static_cast<int32_t>(1 + rng() % 1024);
          std::vector<int32_t> slots = {5, 0, 3, 1, 2};
          std::shuffle(slots.begin(), slots.end(), rng);
          const int64_t max_keys = *std::max_element(lengths.begin(), lengths.end()) + 2;

          const size_t cache_size = static_cast<size_t>(max_seqs * seq_stride);
          std::vector<float> k_cache = rounded(random_vector(rng, cache_size), dtype);
          std::vector<float> v_cache = rounded(random_vector(rng, cache_size), dtype);
          // Rows at or past each sequence's length are NaN: reading one would show.
          std::vector<int64_t> valid_rows(static_cast<size_t>(max_seqs), 0);
          for (int64_t i = 0; i < n_seqs; ++i)
            valid_rows[slots[i]] = lengths[i];
          for (int64_t s = 0; s < max_seqs; ++s) {
            std::fill(k_cache.begin() + s * seq_stride + valid_rows[s] * kv_dim,
                      k_cache.begin() + (s + 1) * seq_stride, kNaN);
            std::fill(v_cache.begin() + s * seq_stride + valid_rows[s] * kv_dim,
                      v_cache.begin() + (s + 1) * seq_stride, kNaN);
          }
          const std::vector<float> q =
              rounded(random_vector(rng, static_cast<size_t>(n_seqs * q_dim)), dtype);

          std::vector<float> expected(static_cast<size_t>(n_seqs * q_dim), kNaN);
          for (int64_t i = 0; i < n_seqs; ++i) {
            cpu::AttentionArgs ca;
            ca.q = q.data() + i * q_dim;
            ca.k = k_cache.data() + slots[i] * seq_stride;
            ca.v = v_cache.data() + slots[i] * seq_stride;
            ca.out = expected.data() + i * q_dim;
            ca.n = 1, ca.pos0 = lengths[i] - 1, ca.n_heads = shape.n_heads;
            ca.n_kv_heads = shape.n_kv_heads, ca.head_dim = head_dim;
            cpu::attention(ca, pool());
          }

          Bits q_d(to_bits(q, dtype)), k_d(to_bits(k_cache, dtype)), v_d(to_bits(v_cache, dtype));
          Bits out(expected.size());
          out.poison();
          DeviceBuffer<int32_t> slots_d(slots), lengths_d(lengths);
          kernels::DecodeAttentionArgs a;
          a.dtype = dtype;
          a.q = q_d.get(), a.k_cache = k_d.get(), a.v_cache = v_d.get();
          a.slots = slots_d.get(), a.lengths = lengths_d.get(), a.out = out.get();
          a.n_seqs = n_seqs, a.n_heads = shape.n_heads, a.n_kv_heads = shape.n_kv_heads;
          a.head_dim = head_dim, a.max_keys = max_keys, a.seq_stride = seq_stride;
          a.keys_per_split = keys_per_split;
          DeviceBuffer<float> workspace(kernels::decode_attention_workspace_bytes(a) /
                                        sizeof(float));
          workspace.poison();
          a.workspace = workspace.get();
          kernels::launch_decode_attention(a, nullptr);
          sync();
          EXPECT_LE(relative_error(download_float(out, dtype), expected), tolerance(dtype));
        }
      }
    }
  }
}

// ---- sampling --------------------------------------------------------------------------------

TEST(KernelParity, ArgmaxMatchesCpuWithTiesAndNaN) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (int64_t vocab : {1, 1000, 32007, 128256}) {
    const int64_t n_rows = 6;
    // bf16-rounded logits have many exact ties; one row ties at the max on purpose.
    std::vector<float> logits =
        rounded(random_vector(rng, static_cast<size_t>(n_rows * vocab), 3.0f), DType::kBF16);
    if (vocab > 10) {
      logits[1 * vocab + 7] = 100.0f;
      logits[1 * vocab + 3] = 100.0f;
      logits[1 * vocab + vocab - 1] = 100.0f;
      for (int64_t j = 0; j < vocab; j += 3)
        logits[2 * vocab + j] = kNaN;
      logits[3 * vocab + 0] = kNaN;
    }
    SCOPED_TRACE(::testing::Message() << "vocab=" << vocab);
    DeviceBuffer<float> logits_d(logits);
    DeviceBuffer<int32_t> tokens(static_cast<size_t>(n_rows));
    tokens.poison();
    kernels::launch_argmax({logits_d.get(), tokens.get(), n_rows, vocab}, nullptr);
    sync();
    const std::vector<int32_t> got = tokens.download();
    for (int64_t r = 0; r < n_rows; ++r) {
      EXPECT_EQ(got[r], argmax(std::span<const float>(logits.data() + r * vocab, vocab)))
          << "row " << r;
    }
  }
}

TEST(KernelParity, SampleMatchesCpuSampler) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  for (int64_t vocab : {2, 5003, 128256}) {
    std::vector<SamplingParams> params;
    for (double temperature : {0.0, 0.6, 1.0, 1.7}) {
      for (int64_t top_k : {int64_t{0}, int64_t{1}, int64_t{5}, int64_t{50}, vocab + 3}) {
        for (double top_p : {1.0, 0.9, 0.3}) {
          SamplingParams p;
          p.temperature = temperature, p.top_k = top_k, p.top_p = top_p, p.seed = rng();
          params.push_back(p);
        }
      }
    }
    const int64_t n_rows = static_cast<int64_t>(params.size());
    std::vector<float> logits(static_cast<size_t>(n_rows * vocab));
    std::vector<kernels::SampleRowParams> row_params(params.size());
    for (int64_t r = 0; r < n_rows; ++r) {
      std::vector<float> row = random_vector(rng, static_cast<size_t>(vocab), 2.5f);
      if (r % 3 == 1) row = rounded(row, DType::kBF16);  // many ties
      if (r % 7 == 2 && vocab > 10) row[static_cast<size_t>(vocab / 2)] = kNaN;
      std::copy(row.begin(), row.end(), logits.begin() + r * vocab);
      const SamplingParams& p = params[static_cast<size_t>(r)];
      row_params[static_cast<size_t>(r)] = {p.temperature, p.top_p, p.top_k, p.seed,
                                            static_cast<int64_t>(rng() % 100000)};
    }
    SCOPED_TRACE(::testing::Message() << "vocab=" << vocab);
    DeviceBuffer<float> logits_d(logits);
    DeviceBuffer<kernels::SampleRowParams> params_d(row_params);
    DeviceBuffer<int32_t> tokens(static_cast<size_t>(n_rows));
    tokens.poison();
    kernels::launch_sample({logits_d.get(), params_d.get(), tokens.get(), n_rows, vocab}, nullptr);
    sync();
    const std::vector<int32_t> got = tokens.download();
    for (int64_t r = 0; r < n_rows; ++r) {
      const SamplingParams& p = params[static_cast<size_t>(r)];
      const int32_t expected =
          sample_token(std::span<const float>(logits.data() + r * vocab, vocab), p,
                       row_params[static_cast<size_t>(r)].position);
      EXPECT_EQ(got[r], expected) << "row " << r << " temperature=" << p.temperature
                                  << " top_k=" << p.top_k << " top_p=" << p.top_p;
    }
  }
}

// ---- GEMM (cuBLASLt) -------------------------------------------------------------------------

TEST(KernelParity, GemmMatchesCpuLinear) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  const uint64_t seed = test_seed();
  SCOPED_TRACE(seed_note(seed));
  std::mt19937_64 rng(seed);
  cuda::Gemm gemm;
  for (DType dtype : kHalfTypes) {
    for (DType y_dtype : {DType::kF32, dtype}) {
      for (int64_t n : {1, 7, 33}) {
        for (int64_t in : {256, 1000}) {
          for (int64_t out : {129, 512}) {
            for (bool accumulate : {false, true}) {
              SCOPED_TRACE(::testing::Message()
                           << name(dtype) << " y " << dtype_name(y_dtype) << " n=" << n
                           << " in=" << in << " out=" << out << " accumulate=" << accumulate);
              const std::vector<float> x =
                  rounded(random_vector(rng, static_cast<size_t>(n * in)), dtype);
              const std::vector<float> w =
                  rounded(random_vector(rng, static_cast<size_t>(out * in), 0.05f), dtype);
              std::vector<float> y0 = random_vector(rng, static_cast<size_t>(n * out));
              if (y_dtype != DType::kF32) y0 = rounded(y0, dtype);
              std::vector<float> expected = accumulate ? y0 : std::vector<float>(y0.size(), kNaN);
              cpu::LinearArgs ca;
              ca.x = x.data(), ca.w = w.data(), ca.y = expected.data();
              ca.n = n, ca.in = in, ca.out = out, ca.accumulate = accumulate;
              cpu::linear(ca, pool());

              Bits x_d(to_bits(x, dtype)), w_d(to_bits(w, dtype));
              DeviceBuffer<float> y32(y0.size());
              Bits y16(y0.size());
              if (y_dtype == DType::kF32) {
                accumulate ? y32.upload(y0) : y32.poison();
              } else {
                accumulate ? y16.upload(to_bits(y0, dtype)) : y16.poison();
              }
              cuda::GemmArgs a;
              a.dtype = dtype, a.y_dtype = y_dtype, a.x = x_d.get(), a.w = w_d.get();
              a.y = y_dtype == DType::kF32 ? static_cast<void*>(y32.get())
                                           : static_cast<void*>(y16.get());
              a.n = n, a.in = in, a.out = out, a.accumulate = accumulate;
              gemm.run(a, nullptr);
              sync();
              if (y_dtype == DType::kF32) {
                EXPECT_LE(relative_error(y32.download(), expected), 1e-4);
              } else {
                EXPECT_LE(relative_error(download_float(y16, dtype), expected), tolerance(dtype));
              }
            }
          }
        }
      }
    }
  }
}

TEST(KernelParity, GemmPlanCacheIsBoundedAndStartsOverCorrectly) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  std::mt19937_64 rng(test_seed());
  constexpr int64_t kIn = 64, kOut = 32;
  constexpr auto kRows = static_cast<int64_t>(cuda::Gemm::kMaxPlans) + 8;
  Bits x(to_bits(random_vector(rng, static_cast<size_t>(kRows * kIn)), DType::kBF16));
  Bits w(to_bits(random_vector(rng, static_cast<size_t>(kOut * kIn), 0.1f), DType::kBF16));
  DeviceBuffer<float> y(static_cast<size_t>(kRows * kOut));
  cuda::Gemm gemm;
  auto run = [&](int64_t n) {
    y.poison();
    gemm.run({.dtype = DType::kBF16,
              .y_dtype = DType::kF32,
              .x = x.get(),
              .w = w.get(),
              .y = y.get(),
              .n = n,
              .in = kIn,
              .out = kOut},
             nullptr);
    sync();
    std::vector<float> rows = y.download();
    rows.resize(static_cast<size_t>(n * kOut));
    return rows;
  };
  const std::vector<float> first = run(5);
  for (int64_t n = 1; n <= kRows; ++n) {  // one plan per row count: the cache starts over once
    run(n);
    ASSERT_LE(gemm.cached_plans(), cuda::Gemm::kMaxPlans) << "n=" << n;
  }
  EXPECT_LT(gemm.cached_plans(), cuda::Gemm::kMaxPlans);
  EXPECT_EQ(run(5), first);  // a plan made again computes the same bits
}

// ---- random weights ----------------------------------------------------------------------------

TEST(KernelParity, RandomFillIsTheHostDrawRounded) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  // Odd size: the grid-stride loop's tail; more values than one pass of the grid covers.
  constexpr int64_t kCount = 4096 * 256 + 12345;
  const uint64_t key = test_seed();
  // A spread that is not a power of two (as the recipes' are): the fused multiply-add rounds
  // differently from a multiply then an add, so both sides must fuse.
  struct Spread {
    float mean, half_width;
  };
  for (const Spread spread : {Spread{0.5f, 0.25f}, Spread{0.01f, 0.0346f}}) {
    for (DType dtype : kHalfTypes) {
      Bits out(kCount);
      out.poison();
      kernels::launch_random_fill({.dtype = dtype,
                                   .out = out.get(),
                                   .numel = kCount,
                                   .key = key,
                                   .mean = spread.mean,
                                   .half_width = spread.half_width},
                                  nullptr);
      sync();
      const std::vector<uint16_t> bits = out.download();
      int64_t mismatches = 0;
      for (int64_t i = 0; i < kCount; ++i) {
        const float value =
            random_weight(key, static_cast<uint64_t>(i), spread.mean, spread.half_width);
        mismatches += bits[static_cast<size_t>(i)] != to_bits(value, dtype);
      }
      EXPECT_EQ(mismatches, 0) << name(dtype) << " half_width " << spread.half_width << ", "
                               << seed_note(key);
    }
  }
}

}  // namespace
}  // namespace conveyor
