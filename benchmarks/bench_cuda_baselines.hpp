// Device facts and same-run baselines of the CUDA benchmarks: device and driver description,
// device-to-device copy bandwidth and cuBLASLt GEMM throughput, plus small statistics helpers.
// Included by bench_engine_cuda.cpp only (one translation unit: internal linkage).
#pragma once

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/cuda/device_context.hpp"
#include "backend/cuda/gemm.hpp"
#include "conveyor/model_config.hpp"
#include "core/stats.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::bench {
namespace {

using nlohmann::json;

// What measure_baselines reads of the command line.
struct BaselineFlags {
  int64_t copy_mib = 2048;
  int64_t gemm_size = 8192;
  int64_t prefill_tokens = 2048;
};

std::string cuda_version(int version) {
  if (version <= 0) return "none";
  return fmt::format("{}.{}", version / 1000, (version % 1000) / 10);
}

// The kernel driver's version ("550.54.15"): /proc/driver/nvidia/version, else NVML loaded at run
// time (so the binary starts, and explains itself, on machines without the driver).
std::string nvidia_driver_version() {
  std::ifstream proc("/proc/driver/nvidia/version");
  std::string line;
  if (std::getline(proc, line)) {
    const size_t at = line.find("Kernel Module");
    if (at != std::string::npos) {
      std::string rest = line.substr(at + std::strlen("Kernel Module"));
      rest.erase(0, rest.find_first_not_of(' '));
      return rest.substr(0, rest.find(' '));
    }
  }
  void* nvml = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (nvml == nullptr) return "unknown";
  using InitFn = int (*)();
  using VersionFn = int (*)(char*, unsigned int);
  auto init = reinterpret_cast<InitFn>(dlsym(nvml, "nvmlInit_v2"));
  auto version = reinterpret_cast<VersionFn>(dlsym(nvml, "nvmlSystemGetDriverVersion"));
  auto shutdown = reinterpret_cast<InitFn>(dlsym(nvml, "nvmlShutdown"));
  std::string result = "unknown";
  if (init != nullptr && version != nullptr && shutdown != nullptr && init() == 0) {
    char text[96] = {};
    if (version(text, sizeof(text)) == 0) result = text;
    shutdown();
  }
  dlclose(nvml);
  return result;
}

json device_info(int device) {
  cudaDeviceProp prop{};
  CONVEYOR_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int driver = 0, runtime = 0, memory_clock_khz = 0, sm_clock_khz = 0;
  CONVEYOR_CUDA_CHECK(cudaDriverGetVersion(&driver));
  CONVEYOR_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  CONVEYOR_CUDA_CHECK(
      cudaDeviceGetAttribute(&memory_clock_khz, cudaDevAttrMemoryClockRate, device));
  CONVEYOR_CUDA_CHECK(cudaDeviceGetAttribute(&sm_clock_khz, cudaDevAttrClockRate, device));
  size_t free_bytes = 0, total_bytes = 0;
  CONVEYOR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  // Double data rate: two transfers per memory clock over the whole bus.
  const double peak_bandwidth =
      2.0 * memory_clock_khz * 1e3 * static_cast<double>(prop.memoryBusWidth) / 8.0;
  return {{"index", device},
          {"name", prop.name},
          {"compute_capability", fmt::format("{}.{}", prop.major, prop.minor)},
          {"driver", nvidia_driver_version()},
          {"cuda_driver_api", cuda_version(driver)},
          {"cuda_runtime", cuda_version(runtime)},
          {"sm_count", prop.multiProcessorCount},
          {"sm_clock_mhz", sm_clock_khz / 1000},
          {"memory_total_bytes", static_cast<double>(total_bytes)},
          {"memory_free_bytes", static_cast<double>(free_bytes)},
          {"memory_clock_mhz", memory_clock_khz / 1000},
          {"memory_bus_bits", prop.memoryBusWidth},
          {"peak_bandwidth_gb_per_s_from_clocks", peak_bandwidth / 1e9}};
}

// ---- baselines -----------------------------------------------------------------------------

class Stream {
 public:
  Stream() { CONVEYOR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

class TimingEvent {
 public:
  TimingEvent() { CONVEYOR_CUDA_CHECK(cudaEventCreate(&event_)); }
  ~TimingEvent() { cudaEventDestroy(event_); }
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// Seconds of each of `reps` runs of `enqueue` on `stream` (CUDA events around each run), after
// `warmup` untimed runs.
template <typename Enqueue>
std::vector<double> time_runs(cudaStream_t stream, int warmup, int reps, Enqueue&& enqueue) {
  for (int i = 0; i < warmup; ++i)
    enqueue();
  CONVEYOR_CUDA_CHECK(cudaStreamSynchronize(stream));
  TimingEvent start, stop;
  std::vector<double> seconds;
  for (int i = 0; i < reps; ++i) {
    CONVEYOR_CUDA_CHECK(cudaEventRecord(start.get(), stream));
    enqueue();
    CONVEYOR_CUDA_CHECK(cudaEventRecord(stop.get(), stream));
    CONVEYOR_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    float ms = 0.0f;
    CONVEYOR_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
    seconds.push_back(1e-3 * ms);
  }
  return seconds;
}

// Round to nearest even; inputs are finite.
uint16_t to_bf16(float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// Fills `buffer` with bf16 values uniform in [-1, 1): a 32 MiB block drawn on the host, repeated.
// Random rather than constant data, since GEMM power draw (and hence clocks) depends on it.
void fill_random_bf16(const cuda::DeviceBuffer& buffer, uint64_t seed) {
  std::vector<uint16_t> block(size_t{16} << 20);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint16_t& v : block) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    v = to_bf16(static_cast<float>(static_cast<double>(state >> 11) * 0x1.0p-52 - 1.0));
  }
  const size_t block_bytes = block.size() * sizeof(uint16_t);
  for (size_t offset = 0; offset < buffer.bytes(); offset += block_bytes) {
    CONVEYOR_CUDA_CHECK(cudaMemcpy(static_cast<char*>(buffer.get()) + offset, block.data(),
                                   std::min(block_bytes, buffer.bytes() - offset),
                                   cudaMemcpyHostToDevice));
  }
}

struct GemmFigure {
  std::string label;
  int64_t n = 0, in = 0, out = 0;
  double seconds = 0.0;  // median
  double flops_per_s() const { return 2.0 * n * in * out / seconds; }
  double weight_bytes_per_s() const { return 2.0 * in * out / seconds; }
};

struct Baselines {
  int64_t copy_bytes = 0;
  double copy_seconds = 0.0;  // median
  double copy_bandwidth = 0.0;
  std::vector<GemmFigure> gemms;  // [0]: the large square GEMM, the prefill reference
};

// The baselines of one run: device copy bandwidth over `copy_mib` MiB and the GEMMs (a
// gemm_size^3 square, and the prefill of `prefill_tokens` tokens of `config`).
Baselines measure_baselines(int device, const ModelConfig& config, const BaselineFlags& flags) {
  Baselines b;
  Stream stream;
  {
    b.copy_bytes = flags.copy_mib << 20;
    cuda::DeviceBuffer src(device, static_cast<size_t>(b.copy_bytes), "copy source");
    cuda::DeviceBuffer dst(device, static_cast<size_t>(b.copy_bytes), "copy destination");
    CONVEYOR_CUDA_CHECK(cudaMemset(src.get(), 0x3c, src.bytes()));
    CONVEYOR_CUDA_CHECK(cudaMemset(dst.get(), 0, dst.bytes()));
    const std::vector<double> seconds = time_runs(stream.get(), 2, 10, [&] {
      CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), src.bytes(),
                                          cudaMemcpyDeviceToDevice, stream.get()));
    });
    b.copy_seconds = median(seconds);
    b.copy_bandwidth = 2.0 * static_cast<double>(b.copy_bytes) / b.copy_seconds;
  }
  const int64_t g = flags.gemm_size, t = flags.prefill_tokens, h = config.hidden_size;
  const int64_t f = config.intermediate_size, v = config.vocab_size;
  struct Shape {
    std::string label;
    int64_t n, in, out;
    DType y_dtype;
  };
  const std::vector<Shape> shapes = {
      {fmt::format("square {}^3", g), g, g, g, DType::kBF16},
      {"prefill gate/up", t, h, f, DType::kBF16},
      {"prefill down", t, f, h, DType::kBF16},
      {"decode lm_head (matvec)", 1, h, v, DType::kF32},
  };
  cuda::Gemm gemm;
  for (const Shape& s : shapes) {
    cuda::DeviceBuffer x(device, static_cast<size_t>(s.n * s.in * 2), "GEMM x");
    cuda::DeviceBuffer w(device, static_cast<size_t>(s.out * s.in * 2), "GEMM w");
    cuda::DeviceBuffer y(device, static_cast<size_t>(s.n * s.out * dtype_size(s.y_dtype)),
                         "GEMM y");
    fill_random_bf16(x, 1);
    fill_random_bf16(w, 2);
    const cuda::GemmArgs args{.dtype = DType::kBF16,
                              .y_dtype = s.y_dtype,
                              .x = x.get(),
                              .w = w.get(),
                              .y = y.get(),
                              .n = s.n,
                              .in = s.in,
                              .out = s.out};
    const std::vector<double> seconds =
        time_runs(stream.get(), 3, 20, [&] { gemm.run(args, stream.get()); });
    b.gemms.push_back({s.label, s.n, s.in, s.out, median(seconds)});
  }
  return b;
}

}  // namespace
}  // namespace conveyor::bench
