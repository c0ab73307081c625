// CUDA kernel launchers validate their arguments before any CUDA call, so these tests run
// everywhere, a machine without a GPU included.
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
#include "gpu/gpu_test_util.hpp"
#include "kernels/kernels.hpp"
#include "model/rope.hpp"

namespace conveyor {
namespace {

using namespace gpu_testing;  // the helpers of tests/gpu/gpu_test_util.hpp

// ---- launcher validation (no device needed) --------------------------------------------------

template <typename Fn>
void expect_invalid(Fn&& fn, const char* what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no exception";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what << ": " << e.what();
  }
}

// A non-null, 256-byte aligned address that must never be dereferenced: every launch below is
// expected to fail validation first.
void* fake() {
  return reinterpret_cast<void*>(std::uintptr_t{0x100000});
}
int32_t* fake_i32() {
  return static_cast<int32_t*>(fake());
}
float* fake_f32() {
  return static_cast<float*>(fake());
}

kernels::PrefillAttentionArgs valid_prefill() {
  kernels::PrefillAttentionArgs a;
  a.q = a.k = a.v = fake();
  a.out = fake();
  a.n = 3, a.pos0 = 0, a.n_heads = 8, a.n_kv_heads = 2, a.head_dim = 64;
  return a;
}

kernels::DecodeAttentionArgs valid_decode() {
  kernels::DecodeAttentionArgs a;
  a.q = a.k_cache = a.v_cache = fake();
  a.out = a.workspace = fake();
  a.slots = a.lengths = fake_i32();
  a.n_seqs = 2, a.n_heads = 8, a.n_kv_heads = 2, a.head_dim = 128, a.max_keys = 100;
  a.seq_stride = 100 * 2 * 128;
  return a;
}

TEST(KernelLaunchers, RejectBadArgumentsBeforeAnyCudaCall) {
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.head_dim = 96;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill head_dim 96");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.n_kv_heads = 3;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill 8 % 3 heads");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.n_kv_heads = 0;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill 0 kv heads");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.q = nullptr;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill null q");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.out = nullptr;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill null out");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.dtype = DType::kF32;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill f32");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.q_stride = 8 * 64 + 4;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill q_stride % 8");
  expect_invalid(
      [] {
        auto a = valid_prefill();
        a.k = static_cast<char*>(fake()) + 2;
        kernels::launch_prefill_attention(a, nullptr);
      },
      "prefill misaligned k");

  expect_invalid(
      [] {
        auto a = valid_decode();
        a.head_dim = 96;
        a.seq_stride = 100 * 2 * 96;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode head_dim 96");
  expect_invalid(
      [] {
        auto a = valid_decode();
        a.n_heads = 6;
        a.n_kv_heads = 4;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode 6 % 4 heads");
  expect_invalid(
      [] {
        auto a = valid_decode();
        a.workspace = nullptr;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode null workspace");
  expect_invalid(
      [] {
        auto a = valid_decode();
        a.lengths = nullptr;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode null lengths");
  expect_invalid(
      [] {
        auto a = valid_decode();
        a.keys_per_split = 48;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode keys_per_split 48");
  expect_invalid(
      [] {
        auto a = valid_decode();
        a.seq_stride = 10;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode short seq_stride");
  expect_invalid(
      [] {
        auto a = valid_decode();
        a.max_keys = 0;
        kernels::launch_decode_attention(a, nullptr);
      },
      "decode max_keys 0");

  expect_invalid(
      [] {
        kernels::RopeArgs a;
        a.q = a.k = fake();
        a.positions = fake_i32();
        a.inv_freq = fake_f32();
        a.n = 2, a.n_heads = 4, a.n_kv_heads = 2, a.head_dim = 63;
        kernels::launch_rope(a, nullptr);
      },
      "rope odd head_dim");
  expect_invalid(
      [] {
        kernels::RopeArgs a;
        a.q = a.k = fake();
        a.inv_freq = fake_f32();
        a.n = 2, a.n_heads = 4, a.n_kv_heads = 2, a.head_dim = 64;
        kernels::launch_rope(a, nullptr);
      },
      "rope null positions");
  expect_invalid(
      [] {
        kernels::RopeArgs a;
        a.q = a.k = fake();
        a.positions = fake_i32();
        a.inv_freq = fake_f32();
        a.v_bias = fake();
        a.n = 2, a.n_heads = 4, a.n_kv_heads = 2, a.head_dim = 64;
        kernels::launch_rope(a, nullptr);
      },
      "rope v_bias without v");
  expect_invalid(
      [] {
        kernels::RopeArgs a;
        a.q = a.k = fake();
        a.positions = fake_i32();
        a.inv_freq = fake_f32();
        a.n = 2, a.n_heads = 4, a.n_kv_heads = 2, a.head_dim = 64, a.q_stride = 100;
        kernels::launch_rope(a, nullptr);
      },
      "rope q_stride shorter than a row");

  expect_invalid(
      [] {
        kernels::RmsNormArgs a;
        a.residual = a.out = fake();
        a.n = 2, a.hidden = 64;
        kernels::launch_rmsnorm_residual(a, nullptr);
      },
      "rmsnorm null weight / aliasing out");
  expect_invalid(
      [] {
        kernels::RmsNormArgs a;
        a.residual = fake();
        a.weight = fake();
        a.out = static_cast<char*>(fake()) + 4096;
        a.n = 2, a.hidden = 64;
        a.residual_dtype = DType::kF16;  // dtype is bf16
        kernels::launch_rmsnorm_residual(a, nullptr);
      },
      "rmsnorm residual dtype");
  expect_invalid(
      [] {
        kernels::RmsNormArgs a;
        a.residual = fake();
        a.weight = fake();
        a.out = static_cast<char*>(fake()) + 4096;
        a.n = 2, a.hidden = 64, a.eps = 0.0;
        kernels::launch_rmsnorm_residual(a, nullptr);
      },
      "rmsnorm eps 0");

  expect_invalid(
      [] {
        kernels::EmbeddingArgs a;
        a.table = fake();
        a.ids = fake_i32();
        a.out = fake();
        a.dtype = DType::kF32;
        a.n = 1, a.vocab = 10, a.hidden = 8;
        kernels::launch_embedding(a, nullptr);
      },
      "embedding f32 table");
  expect_invalid(
      [] {
        kernels::EmbeddingArgs a;
        a.table = fake();
        a.out = fake();
        a.n = 1, a.vocab = 10, a.hidden = 8;
        kernels::launch_embedding(a, nullptr);
      },
      "embedding null ids");

  expect_invalid(
      [] {
        kernels::SwigluArgs a;
        a.gate = a.out = fake();
        a.up = fake();
        a.n = 2, a.inter = 16, a.gate_stride = 32;
        kernels::launch_swiglu(a, nullptr);
      },
      "swiglu aliasing with different strides");
  expect_invalid(
      [] {
        kernels::KvAppendArgs a;
        a.k_new = a.v_new = a.k_cache = a.v_cache = fake();
        a.slots = a.positions = fake_i32();
        a.n = 1, a.kv_dim = 128, a.seq_stride = 64;
        kernels::launch_kv_append(a, nullptr);
      },
      "kv_append seq_stride < kv_dim");
  expect_invalid(
      [] {
        kernels::ArgmaxArgs a;
        a.tokens = fake_i32();
        a.n_rows = 1, a.vocab = 10;
        kernels::launch_argmax(a, nullptr);
      },
      "argmax null logits");
  expect_invalid(
      [] {
        kernels::SampleArgs a;
        a.logits = fake_f32();
        a.tokens = fake_i32();
        a.n_rows = 1, a.vocab = 10;
        kernels::launch_sample(a, nullptr);
      },
      "sample null params");

  expect_invalid(
      [] {
        cuda::GemmArgs a;
        a.x = a.w = fake();
        a.y = fake();
        a.n = 2, a.in = 0, a.out = 4;
        cuda::validate_gemm(a);
      },
      "gemm in 0");
  expect_invalid(
      [] {
        cuda::GemmArgs a;
        a.x = a.w = fake();
        a.y = fake();
        a.n = 2, a.in = 4, a.out = 4;
        a.y_dtype = DType::kF16;
        cuda::validate_gemm(a);
      },
      "gemm y dtype");
}

TEST(KernelLaunchers, EmptyWorkIsANoOpWithoutCuda) {
  // n == 0 returns before any CUDA call, so this passes without a device too.
  kernels::PrefillAttentionArgs prefill = valid_prefill();
  prefill.n = 0;
  EXPECT_NO_THROW(kernels::launch_prefill_attention(prefill, nullptr));
  kernels::DecodeAttentionArgs decode = valid_decode();
  decode.n_seqs = 0;
  EXPECT_NO_THROW(kernels::launch_decode_attention(decode, nullptr));
  kernels::SwigluArgs swiglu;
  swiglu.inter = 8;
  EXPECT_NO_THROW(kernels::launch_swiglu(swiglu, nullptr));
}

TEST(KernelLaunchers, PrefillSharedMemoryFitsHopperAndAmpere) {
  // A100 and H100 allow 163 and 227 KiB per block; sm_86/89 allow 99 KiB.
  EXPECT_GT(kernels::prefill_attention_shared_bytes(64), 48u * 1024);
  EXPECT_LE(kernels::prefill_attention_shared_bytes(128), 163u * 1024);
  EXPECT_GT(kernels::prefill_attention_shared_bytes(128),
            kernels::prefill_attention_shared_bytes(64));
  EXPECT_EQ(kernels::prefill_attention_shared_bytes(96), 0u);
}

TEST(KernelLaunchers, DecodeWorkspaceSize) {
  kernels::DecodeAttentionArgs a = valid_decode();
  a.max_keys = 1000;
  a.keys_per_split = 256;  // 4 splits
  EXPECT_EQ(kernels::decode_attention_workspace_bytes(a), size_t{2 * 8 * 4 * (128 + 2) * 4});
  a.keys_per_split = 0;  // default 256
  EXPECT_EQ(kernels::decode_attention_workspace_bytes(a), size_t{2 * 8 * 4 * (128 + 2) * 4});
}

TEST(KernelLaunchers, RandomFillValidatesBeforeLaunching) {
  kernels::RandomFillArgs a{.dtype = DType::kBF16, .out = fake(), .numel = 10};
  expect_invalid(
      [&] {
        kernels::RandomFillArgs b = a;
        b.dtype = DType::kF32;
        kernels::launch_random_fill(b, nullptr);
      },
      "f32 fill");
  expect_invalid(
      [&] {
        kernels::RandomFillArgs b = a;
        b.numel = -1;
        kernels::launch_random_fill(b, nullptr);
      },
      "negative numel");
  expect_invalid(
      [&] {
        kernels::RandomFillArgs b = a;
        b.out = nullptr;
        kernels::launch_random_fill(b, nullptr);
      },
      "null out");
  a.numel = 0;
  EXPECT_NO_THROW(kernels::launch_random_fill(a, nullptr));  // nothing to do, no CUDA call
}

}  // namespace
}  // namespace conveyor
