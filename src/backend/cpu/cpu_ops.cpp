// fp32 CPU operators: embedding, rmsnorm, linear (sliced single-threaded OpenBLAS), rope,
// causal GQA attention and swiglu, each parallel over the stage's ThreadPool.
#include "backend/cpu/cpu_ops.hpp"

#include <cblas.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/blas_kernels.hpp"
#include "backend/cpu/gemm_small.hpp"
#include "backend/kv_cache.hpp"
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

// y[j] += alpha * x[j].
inline void axpy(float alpha, const float* __restrict x, float* __restrict y, int64_t d) {
  for (int64_t j = 0; j < d; ++j)
    y[j] += alpha * x[j];
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
  if (a.n <= kSmallGemmMaxRows || a.row_invariant) {
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
          const float* inv_freq, ThreadPool& pool, bool adjacent_pairs) {
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
      const float* c = cos_table.data();
      const float* s = sin_table.data();
      if (adjacent_pairs) {
        float* xh = x + t * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = xh[2 * i];
          const float b = xh[2 * i + 1];
          xh[2 * i] = a * c[i] - b * s[i];
          xh[2 * i + 1] = b * c[i] + a * s[i];
        }
        continue;
      }
      float* x1 = x + t * head_dim;
      float* x2 = x1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i];
        const float b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  });
}

namespace {

// e^x for x <= 0 in fp32 (rel. error ~2e-7), written so the compiler vectorizes loops of it:
// x = n ln2 + r with |r| <= ln2/2, e^r by Cephes' degree-6 polynomial, 2^n into the exponent.
// Below -87.3 (where e^x leaves the normal range) and at -inf it returns 0.
inline float exp_nonpositive(float x) {
  const bool underflow = x < -87.3f;
  x = std::max(x, -87.3f);
  const float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return underflow ? 0.0f : p * std::bit_cast<float>(bits);
}

// s[j] = e^(s[j] - max) for j < n; returns their sum (lane-wise, fixed order).
float exp_shifted_sum(float* s, int64_t n, float max) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      s[j + l] = exp_nonpositive(s[j + l] - max);
      acc[l] += s[j + l];
    }
  }
  float sum = 0.0f;
  for (; j < n; ++j) {
    s[j] = exp_nonpositive(s[j] - max);
    sum += s[j];
  }
  for (int64_t l = 0; l < kLanes; ++l)
    sum += acc[l];
  return sum;
}

float max_of(const float* s, int64_t n) {
  float acc[kLanes];
  std::fill(acc, acc + kLanes, -INFINITY);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l)
      acc[l] = std::max(acc[l], s[j + l]);
  }
  float m = -INFINITY;
  for (; j < n; ++j)
    m = std::max(m, s[j]);
  for (int64_t l = 0; l < kLanes; ++l)
    m = std::max(m, acc[l]);
  return m;
}

// 16 floats as one value (a GCC/Clang vector extension): the compiler keeps an array of these
// in vector registers where it would spill a plain float array, and lowers it to whatever
// vector width the target has.
using Float16 = float __attribute__((vector_size(64)));

// How many value rows ahead P V prefetches (8-16 KiB at head_dim 64-128).
constexpr int64_t kPrefetchKeys = 32;

// o[r, c0 : c0 + 16 kParts] += sum_j p[r, j] v[j, same columns] for R rows (p rows ldp apart),
// those outputs held in registers (D a constant): these columns of V are read once per R rows.
// With `prefetch` it fetches V ahead of its reads (when V comes from memory). Each output sums
// over j in order.
template <int64_t D, int R, int64_t kParts>
void probs_times_values_fixed(const float* p, int64_t ldp, int64_t bk, const float* v, float* o,
                              int64_t c0, bool prefetch) {
  static_assert(D % 16 == 0 && kParts <= D / 16);
  Float16 acc[R][kParts];
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < kParts; ++c)
      std::memcpy(&acc[r][c], o + r * D + 16 * (c0 + c), sizeof(Float16));
  for (int64_t j = 0; j < bk; ++j) {
    if (prefetch) {
      // A hint only: addresses past the block do not fault.
      for (int64_t c = 0; c < kParts; ++c)
        __builtin_prefetch(v + (j + kPrefetchKeys) * D + 16 * (c0 + c), 0, 3);
    }
    Float16 pj[R];
    for (int r = 0; r < R; ++r)
      pj[r] = Float16{} + p[r * ldp + j];
    for (int64_t c = 0; c < kParts; ++c) {
      Float16 vj;
      std::memcpy(&vj, v + j * D + 16 * (c0 + c), sizeof(Float16));
      for (int r = 0; r < R; ++r)
        acc[r][c] += pj[r] * vj;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < kParts; ++c)
      std::memcpy(o + r * D + 16 * (c0 + c), &acc[r][c], sizeof(Float16));
}

// R rows, in column slices of 16 / R vectors (16 accumulators leave registers for the loads):
// each slice of V is read once for all R rows, so V is read once per group of R rows.
template <int64_t D, int R>
void probs_times_values_group(const float* p, int64_t ldp, int64_t bk, const float* v, float* o,
                              bool prefetch) {
  constexpr int64_t kAll = D / 16;
  constexpr int64_t kSlice = std::min<int64_t>(kAll, 16 / R);
  static_assert(kAll % kSlice == 0);
  for (int64_t c0 = 0; c0 < kAll; c0 += kSlice)
    probs_times_values_fixed<D, R, kSlice>(p, ldp, bk, v, o, c0, prefetch);
}

// Rows in groups of 8, 4, 2, 1. The first group prefetches V (it reads V from memory); later
// groups find it in cache. At D = 128 a decode step's four query heads per kv head read V once
// (in two column halves), where pairs of rows read it twice.
template <int64_t D>
void probs_times_values_rows(const float* p, int64_t ldp, int64_t bk, const float* v, float* o,
                             int64_t rows) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8)
    probs_times_values_group<D, 8>(p + r * ldp, ldp, bk, v, o + r * D, r == 0);
  for (; r + 4 <= rows; r += 4)
    probs_times_values_group<D, 4>(p + r * ldp, ldp, bk, v, o + r * D, r == 0);
  for (; r + 2 <= rows; r += 2)
    probs_times_values_group<D, 2>(p + r * ldp, ldp, bk, v, o + r * D, r == 0);
  if (r < rows) probs_times_values_group<D, 1>(p + r * ldp, ldp, bk, v, o + r * D, r == 0);
}

// o[r, :] += sum_j p[r, j] v[j, :] over keys j < bk, p rows ldp apart.
void probs_times_values(const float* p, int64_t ldp, int64_t bk, const float* v, float* o,
                        int64_t rows, int64_t d) {
  switch (d) {
    case 64:
      probs_times_values_rows<64>(p, ldp, bk, v, o, rows);
      return;
    case 128:
      probs_times_values_rows<128>(p, ldp, bk, v, o, rows);
      return;
    default:
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < bk; ++j)
          axpy(p[r * ldp + j], v + j * d, o + r * d, d);
  }
}

// How many key tiles ahead the score kernel prefetches (16-32 KiB at head_dim 64-128).
constexpr int64_t kPrefetchTiles = 4;

// s[r, 16 t + l] = q_r . key (16 t + l) for R rows, one tile of 16 keys stored transposed
// ([head_dim][16]): one vector accumulator per row, no horizontal sums. Each (row, key) sums
// over c in order, whatever R is.
template <int R>
void score_tile(const float* q, int64_t d, const float* tile, float* s, int64_t lds,
                bool prefetch) {
  Float16 acc[R] = {};
  for (int64_t c = 0; c < d; ++c) {
    // A hint only: addresses past the cache do not fault.
    if (prefetch) __builtin_prefetch(tile + (kPrefetchTiles * d + c) * kKeyTile, 0, 3);
    Float16 kc;
    std::memcpy(&kc, tile + c * kKeyTile, sizeof(Float16));
    for (int r = 0; r < R; ++r)
      acc[r] += kc * q[r * d + c];
  }
  for (int r = 0; r < R; ++r)
    std::memcpy(s + r * lds, &acc[r], sizeof(Float16));
}

// s[r, j] = q_r . k_j for j < width (a multiple of kKeyTile) from the key tiles at `tiles`.
void scores(const float* q, int64_t rows, int64_t d, const float* tiles, int64_t width, float* s) {
  static_assert(kKeyTile == 16, "score_tile holds one tile in a Float16");
  for (int64_t t = 0; t < width / kKeyTile; ++t) {
    const float* tile = tiles + t * kKeyTile * d;
    float* st = s + t * kKeyTile;
    // The first row group prefetches the tiles ahead; the others find this one in cache.
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8)
      score_tile<8>(q + r * d, d, tile, st + r * width, width, r == 0);
    for (; r + 4 <= rows; r += 4)
      score_tile<4>(q + r * d, d, tile, st + r * width, width, r == 0);
    for (; r < rows; ++r)
      score_tile<1>(q + r * d, d, tile, st + r * width, width, r == 0);
  }
}

// Tiles of the blocked attention. A task is one kv head and a block of up to kQueryBlock tokens
// (times the query heads sharing the kv head); it walks the keys in blocks of kKeyBlock with an
// online softmax, so no score matrix larger than a tile exists.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 256;
// Keys are also cut into splits of kKeySplit, each softmax-ed on its own and merged in order.
// A block of few queries (decode) over a long context runs its splits as separate tasks, so
// few kv heads still give every thread work (flash-decoding); a long block runs them in turn.
// Either way a row's arithmetic is the same.
constexpr int64_t kKeySplit = 1024;
static_assert(kKeySplit % kKeyBlock == 0 && kKeyBlock % kKeyTile == 0 && kKeyTile % kLanes == 0);

// A row's arithmetic depends only on its query, its keys and values and its position: block
// and split boundaries are at fixed key positions, products go through kernels whose sums do
// not depend on the other rows of the tile, and scores past a row's last key add exact zeros.
// So a token's attention output is the same whatever chunk, batch or thread count it is
// computed with (greedy outputs do not change with load).

// A softmax state per row: running max m, sum l and output o (unnormalized).
struct SoftmaxRows {
  float* m;
  float* l;
  float* o;  // rows x d
};

// Merges split state `src` into the running state `dst` for `rows` rows: the same function,
// in split order, whether the splits ran in one task or several.
void merge_rows(const SoftmaxRows& dst, const float* src_m, const float* src_l, const float* src_o,
                int64_t rows, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) {
    const float m_new = std::max(dst.m[r], src_m[r]);
    if (m_new == -INFINITY) continue;  // no key seen by either
    const float a = exp_nonpositive(dst.m[r] - m_new), b = exp_nonpositive(src_m[r] - m_new);
    dst.m[r] = m_new;
    dst.l[r] = dst.l[r] * a + src_l[r] * b;
    float* o = dst.o + r * d;
    const float* so = src_o + r * d;
    for (int64_t c = 0; c < d; ++c)
      o[c] = o[c] * a + so[c] * b;
  }
}

void reset_rows(const SoftmaxRows& s, int64_t rows, int64_t d) {
  std::fill(s.m, s.m + rows, -INFINITY);
  std::fill(s.l, s.l + rows, 0.0f);
  std::fill(s.o, s.o + rows * d, 0.0f);
}

// Per-thread scratch, reused across calls: the tile's scaled queries, one block of scores, the
// state of the split being walked and the running merged state.
struct AttentionScratch {
  std::vector<float> q, s, split_m, split_l, split_o, m, l, o;
  void size(int64_t rows, int64_t d) {
    auto fit = [](std::vector<float>& v, int64_t n) {
      if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    };
    fit(q, rows * d);
    fit(s, rows * kKeyBlock);
    for (auto* v : {&split_m, &split_l, &m, &l})
      fit(*v, rows);
    fit(split_o, rows * d);
    fit(o, rows * d);
  }
};

struct AttentionTask {
  int64_t kvh, i0, i1;  // kv head, tokens [i0, i1)
  int64_t s0, s1;       // key splits [s0, s1)
  int64_t partial;      // where its (single) split's state goes; -1: writes the output
  int64_t cost;         // keys x tokens, for scheduling
};

// One split of keys [j0, j1) for the tile's rows (row r: token i0 + r / group); leaves the
// split's softmax state in `state`.
void attend_split(const AttentionArgs& a, const float* q, int64_t rows, int64_t group,
                  int64_t first_last_key, const float* k, const float* v, int64_t j0, int64_t j1,
                  float* s, const SoftmaxRows& state) {
  const int64_t d = a.head_dim;
  reset_rows(state, rows, d);
  for (int64_t b0 = j0; b0 < j1; b0 += kKeyBlock) {
    const int64_t bk = std::min(kKeyBlock, j1 - b0);
    // Whole key tiles, and sums over kLanes lanes of the whole width, whatever bk is: columns
    // past bk (keys past the tile's last token, inside the cache's capacity) are masked like any
    // key past a row's last.
    const int64_t width = (bk + kKeyTile - 1) / kKeyTile * kKeyTile;
    scores(q, rows, d, k + b0 * d, width, s);
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * width;
      const int64_t last = first_last_key + r / group;  // the row's last visible key
      const int64_t visible = std::clamp<int64_t>(last + 1 - b0, 0, width);
      std::fill(sr + visible, sr + width, -INFINITY);
      const float m_new = std::max(state.m[r], max_of(sr, visible));
      if (m_new == -INFINITY) {  // no visible key yet: nothing to add
        std::fill(sr, sr + width, 0.0f);
        continue;
      }
      const float correction = exp_nonpositive(state.m[r] - m_new);
      state.l[r] = state.l[r] * correction + exp_shifted_sum(sr, width, m_new);
      state.m[r] = m_new;
      if (correction != 1.0f) {
        for (int64_t c = 0; c < d; ++c)
          state.o[r * d + c] *= correction;
      }
    }
    probs_times_values(s, width, bk, v + b0 * d, state.o, rows, d);
  }
}

}  // namespace

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
  const int64_t rows_needed = (a.pos0 + a.n + kKeyTile - 1) / kKeyTile * kKeyTile;
  if (a.kv_head_stride < rows_needed * a.head_dim) {
    fail(ErrorCode::kInvalidArgument,
         "attention: kv_head_stride ({}) is below the {} floats of one kv head's {} positions "
         "(whole key tiles of {}); pass the cache's head stride (capacity x head_dim)",
         a.kv_head_stride, rows_needed * a.head_dim, rows_needed, kKeyTile);
  }
  check_pointer(a.q, "attention", "q");
  check_pointer(a.k, "attention", "k");
  check_pointer(a.v, "attention", "v");
  check_pointer(a.out, "attention", "out");

  const int64_t d = a.head_dim, group = a.n_heads / a.n_kv_heads;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int64_t n_qblocks = (a.n + kQueryBlock - 1) / kQueryBlock;
  const int64_t n_splits = (a.pos0 + a.n + kKeySplit - 1) / kKeySplit;
  const bool split_tasks = n_qblocks == 1 && n_splits > 1;

  std::vector<AttentionTask> tasks;
  for (int64_t kvh = 0; kvh < a.n_kv_heads; ++kvh) {
    for (int64_t b = 0; b < n_qblocks; ++b) {
      const int64_t i0 = b * kQueryBlock, i1 = std::min(a.n, i0 + kQueryBlock);
      const int64_t visible = a.pos0 + i1;  // keys seen by the block's last token
      const int64_t splits = (visible + kKeySplit - 1) / kKeySplit;
      if (split_tasks) {
        for (int64_t sp = 0; sp < splits; ++sp) {
          const int64_t keys = std::min(visible, (sp + 1) * kKeySplit) - sp * kKeySplit;
          tasks.push_back({kvh, i0, i1, sp, sp + 1, kvh * n_splits + sp, keys * (i1 - i0)});
        }
      } else {
        tasks.push_back({kvh, i0, i1, 0, splits, -1, visible * (i1 - i0)});
      }
    }
  }
  // Longest first, handed out one at a time: causal blocks differ in cost by up to n_qblocks
  // times. Which thread runs a task never changes its arithmetic.
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const AttentionTask& x, const AttentionTask& y) { return x.cost > y.cost; });

  // States of split tasks, per (kv head, split): m, l and o of each of the block's rows.
  const int64_t block_rows = group * a.n;
  std::vector<float> part_m, part_l, part_o;
  if (split_tasks) {
    const auto n_parts = static_cast<size_t>(a.n_kv_heads * n_splits * block_rows);
    part_m.resize(n_parts);
    part_l.resize(n_parts);
    part_o.resize(n_parts * static_cast<size_t>(d));
  }
  // Writes o / l of a tile's rows to the output.
  auto write_out = [&](const SoftmaxRows& st, int64_t kvh, int64_t i0, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r / group, h = kvh * group + r % group;
      float* dst = a.out + (i * a.n_heads + h) * d;
      const float inv = 1.0f / st.l[r];
      for (int64_t c = 0; c < d; ++c)
        dst[c] = st.o[r * d + c] * inv;
    }
  };

  std::atomic<int64_t> next{0};
  const auto n_tasks = static_cast<int64_t>(tasks.size());
  pool.parallel_for(std::min<int64_t>(n_tasks, pool.n_threads()), 1, [&](int64_t, int64_t) {
    thread_local AttentionScratch scratch;
    for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;) {
      const AttentionTask& task = tasks[static_cast<size_t>(t)];
      const int64_t nt = task.i1 - task.i0, rows = nt * group;
      scratch.size(rows, d);
      float* q = scratch.q.data();
      // Row r = token (i0 + r / group), head (kvh * group + r % group): the group's heads of
      // one token are contiguous in q, so the tile's rows are nt runs of group * d floats.
      for (int64_t i = 0; i < nt; ++i) {
        const float* src = a.q + ((task.i0 + i) * a.n_heads + task.kvh * group) * d;
        for (int64_t c = 0; c < group * d; ++c)
          q[i * group * d + c] = src[c] * scale;
      }
      const float* k = a.k + task.kvh * a.kv_head_stride;
      const float* v = a.v + task.kvh * a.kv_head_stride;
      const int64_t visible = a.pos0 + task.i1;
      const SoftmaxRows split{scratch.split_m.data(), scratch.split_l.data(),
                              scratch.split_o.data()};
      const SoftmaxRows total{scratch.m.data(), scratch.l.data(), scratch.o.data()};
      reset_rows(total, rows, d);
      for (int64_t sp = task.s0; sp < task.s1; ++sp) {
        attend_split(a, q, rows, group, a.pos0 + task.i0, k, v, sp * kKeySplit,
                     std::min(visible, (sp + 1) * kKeySplit), scratch.s.data(), split);
        merge_rows(total, split.m, split.l, split.o, rows, d);
      }
      if (task.partial < 0) {
        write_out(total, task.kvh, task.i0, rows);
      } else {
        const int64_t base = task.partial * block_rows;
        std::copy(total.m, total.m + rows, part_m.data() + base);
        std::copy(total.l, total.l + rows, part_l.data() + base);
        std::copy(total.o, total.o + rows * d, part_o.data() + base * d);
      }
    }
  });
  if (!split_tasks) return;

  // Merge each kv head's splits in order, as one task would have.
  pool.parallel_for(a.n_kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> m(static_cast<size_t>(block_rows)), l(m.size()), o(m.size() * d);
    const SoftmaxRows total{m.data(), l.data(), o.data()};
    for (int64_t kvh = begin; kvh < end; ++kvh) {
      reset_rows(total, block_rows, d);
      for (int64_t sp = 0; sp < n_splits; ++sp) {
        const int64_t base = (kvh * n_splits + sp) * block_rows;
        merge_rows(total, part_m.data() + base, part_l.data() + base, part_o.data() + base * d,
                   block_rows, d);
      }
      write_out(total, kvh, 0, block_rows);
    }
  });
}

void swiglu(const float* gate, const float* up, int64_t count, float* out, ThreadPool& pool) {
  check_non_negative(count, "swiglu", "count");
  if (count == 0) return;
  check_pointer(gate, "swiglu", "gate");
  check_pointer(up, "swiglu", "up");
  check_pointer(out, "swiglu", "out");
  // silu(g) = g sigmoid(g), with sigmoid from e = e^-|g| <= 1 on either side (1 / (1 + e) for
  // g >= 0, e / (1 + e) below): exp_nonpositive vectorizes, where a call to expf per element
  // was 6 % of a prefill.
  pool.parallel_for(count, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float g = gate[j];
      const float e = exp_nonpositive(-std::fabs(g));
      const float sigmoid = (g >= 0.0f ? 1.0f : e) / (1.0f + e);
      out[j] = g * sigmoid * up[j];
    }
  });
}

}  // namespace conveyor::cpu
