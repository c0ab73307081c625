// Helpers of the GPU tests: skip without a device, RAII device buffers, 16-bit conversions of
// host data (so the CPU reference sees the same rounded inputs as the kernels), seeds.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cpu/thread_pool.hpp"
#include "common/test_util.hpp"

#include "conveyor/dtype.hpp"
#include "core/dtype_convert.hpp"

namespace conveyor::gpu_testing {

// Empty when a CUDA device can be used; otherwise why not.
inline std::string no_device_reason() {
  int count = 0;
  const cudaError_t result = cudaGetDeviceCount(&count);
  if (result != cudaSuccess) return std::string("no CUDA device: ") + cudaGetErrorString(result);
  if (count == 0) return "no CUDA device: cudaGetDeviceCount returned 0";
  return {};
}

// First statement of every test that needs a device.
#define CONVEYOR_REQUIRE_CUDA_DEVICE()                                                             \
  do {                                                                                             \
    if (const std::string reason = ::conveyor::gpu_testing::no_device_reason(); !reason.empty()) { \
      GTEST_SKIP() << reason;                                                                      \
    }                                                                                              \
  } while (0)

inline void cuda_ok(cudaError_t result, const char* what) {
  if (result != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(result));
  }
}

// A device allocation of `count` elements of T (raw bytes for 16-bit types: T = uint16_t).
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : count_(count) {
    cuda_ok(cudaMalloc(&data_, std::max<size_t>(1, count) * sizeof(T)), "cudaMalloc");
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() { return static_cast<T*>(data_); }
  const T* get() const { return static_cast<const T*>(data_); }
  size_t size() const { return count_; }

  void upload(const std::vector<T>& host) {
    if (host.size() != count_) throw std::runtime_error("DeviceBuffer::upload: size mismatch");
    cuda_ok(cudaMemcpy(data_, host.data(), count_ * sizeof(T), cudaMemcpyHostToDevice),
            "cudaMemcpy H2D");
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    cuda_ok(cudaMemcpy(host.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost),
            "cudaMemcpy D2H");
    return host;
  }
  // All bytes 0xff: NaN in fp32, fp16 and bf16; -1 in int32.
  void poison() { cuda_ok(cudaMemset(data_, 0xff, count_ * sizeof(T)), "cudaMemset"); }

 private:
  void* data_ = nullptr;
  size_t count_ = 0;
};

// ---- 16-bit conversions ----------------------------------------------------------------------

inline uint16_t to_bits(float x, DType dtype) {
  return dtype == DType::kBF16 ? f32_to_bf16(x) : f32_to_f16(x);
}
inline float from_bits(uint16_t h, DType dtype) {
  return dtype == DType::kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
}
inline std::vector<uint16_t> to_bits(const std::vector<float>& x, DType dtype) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = to_bits(x[i], dtype);
  return out;
}
inline std::vector<float> from_bits(const std::vector<uint16_t>& h, DType dtype) {
  std::vector<float> out(h.size());
  for (size_t i = 0; i < h.size(); ++i)
    out[i] = from_bits(h[i], dtype);
  return out;
}
// x rounded to `dtype` and back: what the kernels see of x.
inline std::vector<float> rounded(const std::vector<float>& x, DType dtype) {
  return from_bits(to_bits(x, dtype), dtype);
}

// ||a - b|| / ||b|| (L2, in double); infinity when the sizes differ or a value is NaN, so
// unwritten (poisoned) outputs fail.
using test::relative_error;

// Relative error norm a 16-bit result may show against the fp32 CPU op on the same rounded
// inputs (one rounding of the output plus fp32-vs-fp32 reordering).
inline double tolerance(DType dtype) {
  return dtype == DType::kBF16 ? 1e-2 : 2e-3;
}

// ---- seeds -----------------------------------------------------------------------------------

inline uint64_t test_seed() {
  if (const char* env = std::getenv("CONVEYOR_TEST_SEED")) return std::stoull(env);
  return std::random_device{}();
}

inline std::string seed_note(uint64_t seed) {
  return "seed " + std::to_string(seed) +
         " (replay with CONVEYOR_TEST_SEED=" + std::to_string(seed) + ")";
}

inline std::vector<float> random_vector(std::mt19937_64& rng, size_t count, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(count);
  for (float& value : v)
    value = dist(rng);
  return v;
}

using Bits = DeviceBuffer<uint16_t>;

constexpr DType kHalfTypes[] = {DType::kBF16, DType::kF16};
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

inline const char* name(DType dtype) {
  return dtype == DType::kBF16 ? "bf16" : "f16";
}

inline void sync() {
  cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

inline std::vector<float> download_float(const Bits& buffer, DType dtype) {
  return from_bits(buffer.download(), dtype);
}

inline cpu::ThreadPool& pool() {
  static cpu::ThreadPool instance(2);
  return instance;
}

}  // namespace conveyor::gpu_testing
