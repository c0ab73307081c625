// Shared pieces of the CPU benchmarks: the small model on disk, baselines measured in the same
// run (copy bandwidth, OpenBLAS sgemm), timing helpers and JSON output.
#pragma once

#include <cblas.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "model/make_model.hpp"

namespace conveyor::bench {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// The `small` preset (~125M params, f32) in `dir`, written once and reused across runs.
inline std::filesystem::path small_model(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "model.safetensors")) {
    MakeModelOptions options;
    options.config = preset_config("small");
    options.seed = 1;
    options.out_dir = dir;
    make_model(options);
  }
  return dir;
}

// Copy bandwidth with `threads` threads, STREAM convention: (bytes read + bytes written) / s,
// best of `reps`, on a buffer far larger than the caches.
inline double copy_bandwidth(int threads, int64_t bytes = int64_t{512} << 20, int reps = 5) {
  std::vector<char> src(static_cast<size_t>(bytes), 1), dst(static_cast<size_t>(bytes), 0);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    std::vector<std::thread> pool;
    const int64_t part = bytes / threads;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, i] {
        std::memcpy(dst.data() + i * part, src.data() + i * part, static_cast<size_t>(part));
      });
    }
    for (auto& t : pool)
      t.join();
    best = std::min(best, now_seconds() - t0);
  }
  return 2.0 * static_cast<double>(bytes) / best;
}

// Read-only bandwidth with `threads` threads: bytes summed / s, best of `reps`. This is the
// ceiling of a weight-streaming decode, which reads and never writes.
inline double read_bandwidth(int threads, int64_t bytes = int64_t{512} << 20, int reps = 5) {
  const int64_t n = bytes / 4;
  std::vector<float> data(static_cast<size_t>(n), 1.0f);
  std::vector<float> sums(static_cast<size_t>(threads) * 16);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    std::vector<std::thread> pool;
    const int64_t part = n / threads;
    for (int i = 0; i < threads; ++i) {
      pool.emplace_back([&, i] {
        float lanes[16] = {};
        const float* p = data.data() + i * part;
        for (int64_t j = 0; j + 16 <= part; j += 16) {
          for (int l = 0; l < 16; ++l)
            lanes[l] += p[j + l];
        }
        std::copy(lanes, lanes + 16, sums.begin() + i * 16);
      });
    }
    for (auto& t : pool)
      t.join();
    best = std::min(best, now_seconds() - t0);
  }
  if (sums[0] < 0) fmt::print("{}", sums[0]);  // keep the sums alive
  return static_cast<double>(bytes) / best;
}

// OpenBLAS sgemm FLOP/s at m x n x k with OpenBLAS's own threading set to `threads` (the best
// OpenBLAS does on this machine), best of `reps`. Leaves OpenBLAS single-threaded afterwards,
// as conveyor runs it.
inline double sgemm_flops(int threads, int m = 512, int n = 2048, int k = 768, int reps = 5) {
  std::vector<float> a(static_cast<size_t>(m) * k, 0.5f), b(static_cast<size_t>(n) * k, 0.25f),
      c(static_cast<size_t>(m) * n);
  openblas_set_num_threads(threads);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a.data(), k, b.data(), k,
                0.0f, c.data(), n);
    best = std::min(best, now_seconds() - t0);
  }
  openblas_set_num_threads(1);
  return 2.0 * m * n * k / best;
}

inline void write_json(const std::filesystem::path& path, const nlohmann::json& json) {
  std::ofstream(path) << json.dump(2) << "\n";
  fmt::print("wrote {}\n", path.string());
}

}  // namespace conveyor::bench
