// fp32 CPU operators: embedding, rmsnorm, linear (sliced single-threaded OpenBLAS), rope,
// causal GQA attention and swiglu, each parallel over the stage's ThreadPool.
#include "backend/cpu/cpu_ops.hpp"

#include <cblas.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/blas_kernels.hpp"
#include "backend/cpu/gemm_small.hpp"
#include "core/check.hpp"
#include "core/dtype_convert.hpp"

namespace conveyor::cpu {
namespace {

// conveyor owns threading: each pipeline stage has its own ThreadPool and core budget, and
// linear() slices every GEMM across that pool. OpenBLAS's own threads would multiply the core
// count (S stages x T threads x OpenBLAS threads) and fight the pools, so every OpenBLAS call
// runs single-threaded in the thread that makes it. The setting is process-wide.
void ensure_blas_single_threaded() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

}  // namespace

void warm_up(ThreadPool& pool) {
  ensure_blas_single_threaded();
  static const bool warned = [] {
    if (const std::string hint = blas_core_hint(); !hint.empty()) {
      spdlog::warn(
          "OpenBLAS runs its {} kernels on this CPU, which can run {}: large GEMMs (prefill) "
          "will be about 3x slower; set OPENBLAS_CORETYPE={} in the environment (conveyor's "
          "binaries do it themselves)",
          blas_core(), hint, hint);
    }
    return true;
  }();
  (void)warned;
  // OpenBLAS sets up per-thread buffers on a thread's first call; pay for it at load time.
  const int n = pool.n_threads();
  pool.parallel_for(n, 1, [](int64_t, int64_t) {
    float a[16 * 16] = {}, b[16 * 16] = {}, c[16 * 16] = {};
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 16, 16, 16, 1.0f, a, 16, b, 16, 0.0f, c,
                16);
  });
}

namespace {

// Lanes of the independent partial sums in reductions: without -ffast-math the compiler may
// not reorder a single running sum, but it vectorizes these lane-wise updates.
constexpr int64_t kLanes = 16;

// sum_j a[j] * b[j] in fp32.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l)
      acc[l] += a[j + l] * b[j + l];
  }
  float tail = 0.0f;
  for (; j < d; ++j)
    tail += a[j] * b[j];
  float sum = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l)
    sum += acc[l];
  return sum + tail;
}

// y[j] += alpha * x[j].
inline void axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t d) {
  for (int64_t j = 0; j < d; ++j)
    y[j] += alpha * x[j];
}

inline void prefetch_line(const float* p) {
#if defined(__x86_64__) || defined(__i386__)
  // GCC 12 deletes loops whose only statements are __builtin_prefetch; asm volatile stays.
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p);
#endif
}

// Rows of the KV cache prefetched ahead of the one being read: cache rows of one kv head are
// n_kv_heads * head_dim floats apart (often a page or more), which the hardware prefetchers
// do not follow.
constexpr int64_t kPrefetchRows = 4;

// Prefetches row `row` (d floats, rows `stride` apart) of one kv head if it is below n_rows.
inline void prefetch_row(const float* base, int64_t row, int64_t n_rows, int64_t stride,
                         int64_t d) {
  if (row >= n_rows) return;
  const float* p = base + row * stride;
  for (int64_t c = 0; c < d; c += 16)
    prefetch_line(p + c);
}

// sum_j x[j]^2 in double.
inline double sum_squares(const float* x, int64_t d) {
  constexpr int64_t kDoubleLanes = 8;
  double acc[kDoubleLanes] = {};
  int64_t j = 0;
  for (; j + kDoubleLanes <= d; j += kDoubleLanes) {
    for (int64_t l = 0; l < kDoubleLanes; ++l) {
      const double v = x[j + l];
      acc[l] += v * v;
    }
  }
  double sum = 0.0;
  for (; j < d; ++j)
    sum += static_cast<double>(x[j]) * x[j];
  for (int64_t l = 0; l < kDoubleLanes; ++l)
    sum += acc[l];
  return sum;
}

void check_pointer(const void* p, const char* op, const char* name) {
  if (p == nullptr) {
    fail(ErrorCode::kInvalidArgument, "{}: {} is null; pass a buffer of the documented shape", op,
         name);
  }
}

void check_non_negative(int64_t value, const char* op, const char* name) {
  if (value < 0)
    fail(ErrorCode::kInvalidArgument, "{}: {} is {} but must be >= 0", op, name, value);
}

void check_blas_dim(int64_t value, const char* name) {
  if (value > INT_MAX) {
    fail(ErrorCode::kInvalidArgument,
         "linear: {} is {} but OpenBLAS takes 32-bit sizes (limit {}); split the GEMM", name, value,
         INT_MAX);
  }
}

// Output columns per linear slice unit: slices stay 64-byte aligned in y and match the
// column blocking of the BLAS kernels, so results do not depend on the thread count.
constexpr int64_t kColumnBlock = 16;
// Fewest weight elements one slice streams, so a wake-up is amortized (64 KiB of fp32).
constexpr int64_t kMinSliceWeights = 16 * 1024;

// y[:, o0:o1] of linear(): prepare y (bias or zeros, or += bias), then one single-threaded
// BLAS call with beta = 1. Preparing y ourselves keeps uninitialized y (beta = 0 with NaN in
// y) out of BLAS's hands.
void linear_slice(const LinearArgs& a, int64_t o0, int64_t o1) {
  const int64_t m = o1 - o0;
  for (int64_t r = 0; r < a.n; ++r) {
    float* y = a.y + r * a.out + o0;
    if (!a.accumulate) {
      if (a.bias != nullptr) {
        std::memcpy(y, a.bias + o0, static_cast<size_t>(m) * sizeof(float));
      } else {
        std::fill(y, y + m, 0.0f);
      }
    } else if (a.bias != nullptr) {
      const float* b = a.bias + o0;
      for (int64_t j = 0; j < m; ++j)
        y[j] += b[j];
    }
  }
  if (a.n <= kSmallGemmMaxRows) {
    // Decode and short chunks: memory-bound on reading w once; a packed GEMM would copy w first.
    small_gemm({.x = a.x,
                .w = a.w.data,
                .wtype = a.w.type,
                .y = a.y,
                .n = a.n,
                .in = a.in,
                .ldy = a.out,
                .o0 = o0,
                .o1 = o1});
  } else if (a.w.type == WeightType::kF32) {
    const float* w = static_cast<const float*>(a.w.data) + o0 * a.in;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(a.n), static_cast<int>(m),
                static_cast<int>(a.in), 1.0f, a.x, static_cast<int>(a.in), w,
                static_cast<int>(a.in), 1.0f, a.y + o0, static_cast<int>(a.out));
  } else {
    // bf16 weights and many rows: widen a block of weight rows at a time into a per-thread
    // buffer (its cost spread over the n rows) and multiply it as fp32.
    constexpr int64_t kBlock = 64;
    thread_local std::vector<float> widened;
    widened.resize(static_cast<size_t>(kBlock * a.in));
    const auto* w16 = static_cast<const uint16_t*>(a.w.data);
    for (int64_t b0 = o0; b0 < o1; b0 += kBlock) {
      const int64_t rows = std::min(kBlock, o1 - b0);
      for (int64_t i = 0; i < rows * a.in; ++i)
        widened[static_cast<size_t>(i)] = bf16_to_f32(w16[b0 * a.in + i]);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(a.n),
                  static_cast<int>(rows), static_cast<int>(a.in), 1.0f, a.x, static_cast<int>(a.in),
                  widened.data(), static_cast<int>(a.in), 1.0f, a.y + b0, static_cast<int>(a.out));
    }
  }
}

}  // namespace

void embedding(WeightView table, const int32_t* ids, int64_t n, int64_t hidden, float* out,
               ThreadPool& pool) {
  check_non_negative(n, "embedding", "n");
  check_non_negative(hidden, "embedding", "hidden");
  if (n == 0 || hidden == 0) return;
  check_pointer(table.data, "embedding", "table");
  check_pointer(ids, "embedding", "ids");
  check_pointer(out, "embedding", "out");
  const int64_t grain = std::max<int64_t>(1, 16384 / hidden);
  pool.parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = static_cast<int64_t>(ids[i]) * hidden;
      if (table.type == WeightType::kF32) {
        std::memcpy(out + i * hidden, static_cast<const float*>(table.data) + row,
                    static_cast<size_t>(hidden) * sizeof(float));
      } else {
        const uint16_t* src = static_cast<const uint16_t*>(table.data) + row;
        for (int64_t j = 0; j < hidden; ++j)
          out[i * hidden + j] = bf16_to_f32(src[j]);
      }
    }
  });
}

void rmsnorm(const float* x, const float* weight, int64_t n, int64_t hidden, double eps, float* out,
             ThreadPool& pool) {
  check_non_negative(n, "rmsnorm", "n");
  check_non_negative(hidden, "rmsnorm", "hidden");
  if (n == 0 || hidden == 0) return;
  check_pointer(x, "rmsnorm", "x");
  check_pointer(weight, "rmsnorm", "weight");
  check_pointer(out, "rmsnorm", "out");
  const int64_t grain = std::max<int64_t>(1, 16384 / hidden);
  pool.parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = x + i * hidden;
      float* oi = out + i * hidden;
      const double mean_square = sum_squares(xi, hidden) / static_cast<double>(hidden);
      const float scale = static_cast<float>(1.0 / std::sqrt(mean_square + eps));
      // (x * scale) * weight, in Hugging Face's order.
      for (int64_t j = 0; j < hidden; ++j)
        oi[j] = (xi[j] * scale) * weight[j];
    }
  });
}

void linear(const LinearArgs& args, ThreadPool& pool) {
  check_non_negative(args.n, "linear", "n");
  if (args.in <= 0 || args.out <= 0) {
    fail(ErrorCode::kInvalidArgument, "linear: in and out must be positive but are {} and {}",
         args.in, args.out);
  }
  if (args.n == 0) return;
  check_pointer(args.x, "linear", "x");
  check_pointer(args.w.data, "linear", "w");
  check_pointer(args.y, "linear", "y");
  check_blas_dim(args.n, "n");
  check_blas_dim(args.in, "in");
  check_blas_dim(args.out, "out");
  ensure_blas_single_threaded();

  const int64_t n_blocks = (args.out + kColumnBlock - 1) / kColumnBlock;
  const int64_t grain = std::max<int64_t>(1, kMinSliceWeights / (kColumnBlock * args.in));
  pool.parallel_for(n_blocks, grain, [&](int64_t begin, int64_t end) {
    linear_slice(args, begin * kColumnBlock, std::min(args.out, end * kColumnBlock));
  });
}

void rope(float* x, const int64_t* positions, int64_t n, int64_t n_heads, int64_t head_dim,
          const float* inv_freq, ThreadPool& pool) {
  check_non_negative(n, "rope", "n");
  check_non_negative(n_heads, "rope", "n_heads");
  if (head_dim <= 0 || head_dim % 2 != 0) {
    fail(ErrorCode::kInvalidArgument, "rope: head_dim must be positive and even but is {}",
         head_dim);
  }
  if (n == 0 || n_heads == 0) return;
  check_pointer(x, "rope", "x");
  check_pointer(positions, "rope", "positions");
  check_pointer(inv_freq, "rope", "inv_freq");
  const int64_t half = head_dim / 2;
  const int64_t grain = std::max<int64_t>(1, 4096 / head_dim);
  // Tasks are (token, head) pairs, token-major, so a range recomputes cos/sin only when its
  // token changes: once per token per thread rather than once per head.
  pool.parallel_for(n * n_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> cos_table(static_cast<size_t>(half));
    std::vector<float> sin_table(static_cast<size_t>(half));
    int64_t table_token = -1;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t token = t / n_heads;
      if (token != table_token) {
        const double pos = static_cast<double>(positions[token]);
        for (int64_t i = 0; i < half; ++i) {
          const double angle = pos * static_cast<double>(inv_freq[i]);
          cos_table[static_cast<size_t>(i)] = static_cast<float>(std::cos(angle));
          sin_table[static_cast<size_t>(i)] = static_cast<float>(std::sin(angle));
        }
        table_token = token;
      }
      float* x1 = x + t * head_dim;
      float* x2 = x1 + half;
      const float* c = cos_table.data();
      const float* s = sin_table.data();
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i];
        const float b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  });
}

void attention(const AttentionArgs& a, ThreadPool& pool) {
  check_non_negative(a.n, "attention", "n");
  check_non_negative(a.pos0, "attention", "pos0");
  if (a.n_heads <= 0 || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0 || a.head_dim <= 0) {
    fail(ErrorCode::kInvalidArgument,
         "attention: n_heads ({}) must be a positive multiple of n_kv_heads ({}) and head_dim "
         "({}) positive",
         a.n_heads, a.n_kv_heads, a.head_dim);
  }
  if (a.n == 0) return;
  check_pointer(a.q, "attention", "q");
  check_pointer(a.k, "attention", "k");
  check_pointer(a.v, "attention", "v");
  check_pointer(a.out, "attention", "out");

  const int64_t d = a.head_dim;
  const int64_t group = a.n_heads / a.n_kv_heads;
  const int64_t kv_stride = a.n_kv_heads * d;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  // A task is one token and a chunk of the query heads that share one kv head: each key and
  // value row is read once per task and reused from L1 by every head of the chunk (GQA). Heads
  // are chunked only as far as needed to give every thread work, e.g. for decode with few kv
  // heads. Each head's arithmetic is the same whatever the chunking, so results do not depend
  // on the thread count.
  const int64_t min_tasks = 2 * static_cast<int64_t>(pool.n_threads());
  const int64_t wanted_chunks = (min_tasks + a.n_kv_heads * a.n - 1) / (a.n_kv_heads * a.n);
  const int64_t chunk =
      (group + std::min(group, wanted_chunks) - 1) / std::min(group, wanted_chunks);
  const int64_t n_chunks = (group + chunk - 1) / chunk;
  const int64_t n_rows = a.pos0 + a.n;
  // Tasks are ordered (kv head, chunk, token) with the token fastest: under causal masking later
  // tokens cost more, so contiguous ranges of whole heads balance prefill across threads.
  pool.parallel_for(a.n_kv_heads * n_chunks * a.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(chunk * n_rows));  // [chunk, n_keys]
    std::vector<float> acc(static_cast<size_t>(chunk * d));          // [chunk, head_dim]
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t % a.n;
      const int64_t kvh = t / a.n / n_chunks;
      const int64_t h0 = kvh * group + (t / a.n % n_chunks) * chunk;
      const int64_t hn = std::min(chunk, (kvh + 1) * group - h0);
      const int64_t n_keys = a.pos0 + i + 1;
      const float* q = a.q + (i * a.n_heads + h0) * d;  // hn heads, contiguous
      const float* k = a.k + kvh * d;
      const float* v = a.v + kvh * d;

      for (int64_t j = 0; j < n_keys; ++j) {
        prefetch_row(k, j + kPrefetchRows, n_keys, kv_stride, d);
        const float* kj = k + j * kv_stride;
        for (int64_t hl = 0; hl < hn; ++hl) {
          scores[static_cast<size_t>(hl * n_rows + j)] = dot(q + hl * d, kj, d) * scale;
        }
      }
      for (int64_t hl = 0; hl < hn; ++hl) {
        float* s = scores.data() + hl * n_rows;
        float max_score = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j)
          max_score = std::max(max_score, s[j]);
        float sum = 0.0f;
        for (int64_t j = 0; j < n_keys; ++j) {
          s[j] = std::exp(s[j] - max_score);
          sum += s[j];
        }
        // Normalize the probabilities up front so the value sum needs no final division.
        const float inv_sum = 1.0f / sum;
        for (int64_t j = 0; j < n_keys; ++j)
          s[j] *= inv_sum;
      }

      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < n_keys; ++j) {
        prefetch_row(v, j + kPrefetchRows, n_keys, kv_stride, d);
        const float* vj = v + j * kv_stride;
        for (int64_t hl = 0; hl < hn; ++hl) {
          axpy(scores[static_cast<size_t>(hl * n_rows + j)], vj, acc.data() + hl * d, d);
        }
      }
      std::copy(acc.begin(), acc.begin() + hn * d, a.out + (i * a.n_heads + h0) * d);
    }
  });
}

void swiglu(const float* gate, const float* up, int64_t count, float* out, ThreadPool& pool) {
  check_non_negative(count, "swiglu", "count");
  if (count == 0) return;
  check_pointer(gate, "swiglu", "gate");
  check_pointer(up, "swiglu", "up");
  check_pointer(out, "swiglu", "out");
  pool.parallel_for(count, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float g = gate[j];
      out[j] = g / (1.0f + std::exp(-g)) * up[j];
    }
  });
}

}  // namespace conveyor::cpu
