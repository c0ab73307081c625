// Benchmarks of the fp32 CPU ops: linear (decode n=1 against a memcpy of the weight bytes on the
// same threads, and prefill n=128) and attention (decode against a long cache, prefill).
#include <benchmark/benchmark.h>

#include <algorithm>

#include <memory>

#include <sys/mman.h>
#include <cstdlib>

#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/blas_kernels.hpp"
#include "backend/cpu/cpu_ops.hpp"

namespace conveyor::cpu {
namespace {

std::vector<float> random_vector(size_t count) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(count);
  for (float& value : v)
    value = dist(rng);
  return v;
}

// Copies `bytes` split over the pool, as linear() splits its weight: the bandwidth baseline.
void pool_memcpy(char* dst, const char* src, int64_t bytes, ThreadPool& pool) {
  constexpr int64_t kChunk = 4096;
  pool.parallel_for((bytes + kChunk - 1) / kChunk, 16, [&](int64_t begin, int64_t end) {
    const int64_t b = begin * kChunk;
    const int64_t e = std::min(bytes, end * kChunk);
    std::memcpy(dst + b, src + b, static_cast<size_t>(e - b));
  });
}

// Args: n, in, out, threads. Bytes processed = weight bytes read.
void BM_Linear(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  ThreadPool pool(static_cast<int>(state.range(3)));
  const std::vector<float> x = random_vector(static_cast<size_t>(n * in));
  const std::vector<float> w = random_vector(static_cast<size_t>(out * in));
  std::vector<float> y(static_cast<size_t>(n * out));
  LinearArgs args;
  args.x = x.data();
  args.w = w.data();
  args.y = y.data();
  args.n = n;
  args.in = in;
  args.out = out;
  for (auto _ : state) {
    linear(args, pool);
    benchmark::DoNotOptimize(y.data());
  }
  const double weight_bytes = static_cast<double>(out * in) * sizeof(float);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * weight_bytes));
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(n * in * out),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Linear)
    ->ArgNames({"n", "in", "out", "threads"})
    ->Args({1, 768, 2048, 1})
    ->Args({1, 768, 2048, 2})
    ->Args({1, 2048, 768, 2})
    ->Args({1, 768, 32000, 2})
    ->Args({128, 768, 2048, 1})
    ->Args({128, 768, 2048, 2})
    ->UseRealTime();

// Args: MiB, threads, huge. Decode's weight stream: one row (n = 1) through a chain of SmolLM2
// MLP matrices ([1536, 576] fp32, 3.4 MiB each) holding MiB in all, far more than the caches,
// so every weight comes from memory as in a decode step; compare with BM_ReadOnce of as many
// bytes. huge = 1: the matrices in one 2 MiB-aligned buffer advised MADV_HUGEPAGE (transparent
// huge pages: 512x fewer TLB entries to walk), 0: 4 KiB pages as a file mapping has.
void BM_GemvStream(benchmark::State& state) {
  constexpr int64_t kIn = 576, kOut = 1536, kMatrix = kIn * kOut;
  const int64_t matrices = (state.range(0) << 20) / (kMatrix * int64_t{sizeof(float)});
  ThreadPool pool(static_cast<int>(state.range(1)));
  const auto bytes = static_cast<size_t>(matrices * kMatrix) * sizeof(float);
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  std::unique_ptr<float, decltype(&std::free)> buffer(
      static_cast<float*>(std::aligned_alloc(kHuge, rounded)), &std::free);
  if (state.range(2) != 0)
    ::madvise(buffer.get(), rounded, MADV_HUGEPAGE);
  else
    ::madvise(buffer.get(), rounded, MADV_NOHUGEPAGE);
  const std::vector<float> values = random_vector(static_cast<size_t>(kMatrix));
  for (int64_t i = 0; i < matrices; ++i)
    std::copy(values.begin(), values.end(), buffer.get() + i * kMatrix);
  const std::vector<float> x = random_vector(static_cast<size_t>(kIn));
  std::vector<float> y(static_cast<size_t>(kOut));
  for (auto _ : state) {
    for (int64_t i = 0; i < matrices; ++i) {
      linear({.x = x.data(),
              .w = buffer.get() + i * kMatrix,
              .y = y.data(),
              .n = 1,
              .in = kIn,
              .out = kOut},
             pool);
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(state.iterations() * matrices * kIn * kOut *
                          static_cast<int64_t>(sizeof(float)));
}
BENCHMARK(BM_GemvStream)
    ->ArgNames({"MiB", "threads", "huge"})
    ->Args({512, 1, 0})
    ->Args({512, 1, 1})
    ->Args({512, 2, 0})
    ->Args({512, 2, 1})
    ->UseRealTime();

// Args: bytes, threads. Bytes processed = bytes copied (the baseline for BM_Linear n=1).
void BM_Memcpy(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  ThreadPool pool(static_cast<int>(state.range(1)));
  std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes), 0);
  for (auto _ : state) {
    pool_memcpy(dst.data(), src.data(), bytes, pool);
    benchmark::DoNotOptimize(dst.data());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}
BENCHMARK(BM_Memcpy)
    ->ArgNames({"bytes", "threads"})
    ->Args({768 * 2048 * 4, 1})
    ->Args({768 * 2048 * 4, 2})
    ->Args({int64_t{768} * 32000 * 4, 2})
    ->UseRealTime();

// Args: bytes, threads. Reads a buffer once (a lane-wise float sum): the bound for attention
// over a KV cache of that size (BM_Attention n:1 pos0:4095 reads 32 MiB).
void BM_ReadOnce(benchmark::State& state) {
  const int64_t bytes = state.range(0);
  ThreadPool pool(static_cast<int>(state.range(1)));
  const std::vector<float> src = random_vector(static_cast<size_t>(bytes) / sizeof(float));
  const auto n = static_cast<int64_t>(src.size());
  for (auto _ : state) {
    std::vector<float> sums(static_cast<size_t>(pool.n_threads()) * 16, 0.0f);
    pool.parallel_for(n, 1 << 16, [&](int64_t begin, int64_t end) {
      float acc[16] = {};
      for (int64_t i = begin; i + 16 <= end; i += 16)
        for (int l = 0; l < 16; ++l)
          acc[l] += src[static_cast<size_t>(i + l)];
      const auto slot = static_cast<size_t>(begin * pool.n_threads() / n) * 16;
      for (int l = 0; l < 16; ++l)
        sums[slot + static_cast<size_t>(l)] = acc[l];
    });
    benchmark::DoNotOptimize(sums.data());
  }
  state.SetBytesProcessed(state.iterations() * bytes);
}
BENCHMARK(BM_ReadOnce)
    ->ArgNames({"bytes", "threads"})
    ->Args({32 << 20, 1})
    ->Args({32 << 20, 2})
    ->Args({512 << 20, 1})  // the bound for BM_GemvStream
    ->Args({512 << 20, 2})
    ->UseRealTime();

// Args: n, pos0, threads; Llama-2-7B-like heads with GQA 4 (32 query, 8 kv heads, head_dim 128).
void BM_Attention(benchmark::State& state) {
  const int64_t n = state.range(0), pos0 = state.range(1);
  ThreadPool pool(static_cast<int>(state.range(2)));
  const int64_t n_heads = 32, n_kv_heads = 8, head_dim = 128;
  const std::vector<float> q = random_vector(static_cast<size_t>(n * n_heads * head_dim));
  const std::vector<float> k =
      random_vector(static_cast<size_t>((pos0 + n) * n_kv_heads * head_dim));
  const std::vector<float> v = k;
  std::vector<float> out(q.size());
  AttentionArgs args;
  args.q = q.data();
  args.k = k.data();
  args.v = v.data();
  args.out = out.data();
  args.n = n;
  args.pos0 = pos0;
  args.n_heads = n_heads;
  args.n_kv_heads = n_kv_heads;
  args.head_dim = head_dim;
  args.kv_head_stride = (pos0 + n) * head_dim;  // head-major, as the KV cache stores it
  for (auto _ : state) {
    attention(args, pool);
    benchmark::DoNotOptimize(out.data());
  }
  // K and V bytes of the context (read at least once per step).
  state.SetBytesProcessed(state.iterations() * 2 * (pos0 + n) * n_kv_heads * head_dim *
                          static_cast<int64_t>(sizeof(float)));
}
BENCHMARK(BM_Attention)
    ->ArgNames({"n", "pos0", "threads"})
    ->Args({1, 4095, 1})
    ->Args({1, 4095, 2})
    ->Args({128, 0, 2})
    ->Args({2048, 0, 1})
    ->UseRealTime();

}  // namespace
}  // namespace conveyor::cpu

int main(int argc, char** argv) {
  // OpenBLAS's own kernel choice on this CPU can be 3x slower (blas_kernels.hpp).
  conveyor::cpu::reexec_for_blas_kernels(argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
