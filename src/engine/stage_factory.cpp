// Backend selection and stage construction for the Engine.
#include "engine/stage_factory.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>
#include <string>
#include <utility>
#include <variant>

#include "backend/cpu/cpu_stage.hpp"
#include "core/check.hpp"

#include "engine/cuda_plugin_loader.hpp"

// cmake/cuda.cmake defines CONVEYOR_WITH_CUDA=1 when it builds the CUDA plug-in.
#ifndef CONVEYOR_WITH_CUDA
#define CONVEYOR_WITH_CUDA 0
#endif

namespace conveyor {

namespace {

int device_count() {
#if CONVEYOR_WITH_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

}  // namespace

BackendKind resolve_backend(BackendKind requested) {
  if (requested == BackendKind::kAuto) {
    try {
      return device_count() > 0 ? BackendKind::kCuda : BackendKind::kCpu;
    } catch (const Error& e) {  // a driver but no usable plug-in: run on the CPU, say why
      spdlog::warn("running on the cpu backend: {}", e.what());
      return BackendKind::kCpu;
    }
  }
  if (requested == BackendKind::kCuda) {
#if !CONVEYOR_WITH_CUDA
    fail(ErrorCode::kInvalidArgument,
         "the CUDA backend was requested but this conveyor was built without it; rebuild with the "
         "CUDA toolkit installed (CONVEYOR_ENABLE_CUDA=ON) or use the cpu backend");
#else
    if (device_count() == 0) {
      fail(ErrorCode::kDevice,
           "the CUDA backend was requested but no CUDA device is visible; check the driver and "
           "CUDA_VISIBLE_DEVICES, or use the cpu backend");
    }
#endif
  }
  return requested;
}

namespace {

// MemAvailable of /proc/meminfo in bytes, or 0 when it cannot be read.
double available_host_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kib = 0.0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024.0;
  }
  return 0.0;
}

double gib(double bytes) {
  return bytes / (1 << 30);
}

}  // namespace

void check_host_memory(const ModelConfig& config, DType weight_dtype, int processes) {
  const double available = available_host_bytes();
  if (available <= 0.0) return;
  // Loading holds a stage's fp32 weights before bf16 ones are made from them, tensor by tensor;
  // the whole model in the stored dtype is the floor. A tied head on a stage without the
  // embedding holds its own copy.
  const double params = static_cast<double>(
      config.n_params() +
      (config.tie_word_embeddings ? config.vocab_size * config.hidden_size : 0));
  // Across processes each holds about its share of the layers.
  const double weights =
      static_cast<double>(dtype_size(weight_dtype)) * params / static_cast<double>(processes);
  if (weights > available) {
    fail(ErrorCode::kOutOfMemory,
         "the cpu backend needs {:.1f} GiB of host memory for {} of this model's {} weights "
         "({:.2f}B parameters), before any KV cache, but {:.1f} GiB is available; use --dtype "
         "bf16, --backend cuda, more processes (mpirun) or a smaller model",
         gib(weights), processes > 1 ? fmt::format("this process' 1/{}", processes) : "all",
         weight_dtype == DType::kF32 ? "fp32" : dtype_flag(weight_dtype),
         static_cast<double>(config.n_params()) / 1e9, gib(available));
  }
}

std::vector<int> stage_devices(const DeviceOptions& options, int n_stages, int first, int end) {
  std::vector<int> devices = options.cuda_devices;
  if (devices.empty()) {
    for (int s = 0; s < n_stages; ++s)
      devices.push_back(s);
  }
  if (static_cast<int>(devices.size()) != n_stages) {
    fail(ErrorCode::kInvalidArgument,
         "{} devices listed for {} stages; give one device id per stage (repeat an id to share a "
         "device, e.g. --devices 0,0,0,0)",
         devices.size(), n_stages);
  }
  const int available = device_count();
  for (size_t s = static_cast<size_t>(first);
       s < (end < 0 ? devices.size() : static_cast<size_t>(end)); ++s) {
    if (devices[s] < 0 || devices[s] >= available) {
      fail(ErrorCode::kInvalidArgument,
           "stage {} is assigned CUDA device {} but {} device{} visible (ids 0..{}); with fewer "
           "GPUs than stages, let stages share a device (--devices 0,0,...)",
           s, devices[s], available, available == 1 ? " is" : "s are", available - 1);
    }
  }
  return devices;
}

std::string cuda_pci_bus_id(int device) {
#if CONVEYOR_WITH_CUDA
  return cuda_plugin().pci_bus_id(device);
#else
  (void)device;
  fail(ErrorCode::kInternal, "cuda_pci_bus_id: the cuda backend in a build without it");
#endif
}

std::function<std::unique_ptr<Link>(int)> make_links(BackendKind backend, const ModelConfig& config,
                                                     const EngineOptions& options,
                                                     const std::vector<int>& devices,
                                                     int64_t max_context) {
  if (options.device.transport == Transport::kLocal) return {};
  if (backend != BackendKind::kCuda) {
    fail(ErrorCode::kInvalidArgument,
         "the nccl transport moves device buffers between GPUs and needs the cuda backend, but "
         "the stages run on the cpu; use --backend cuda, or --transport local");
  }
#if CONVEYOR_WITH_CUDA
  if (devices.size() < 2) return {};  // no links
  // Each link carries at most what the receiving CUDA stage takes.
  return cuda_plugin().make_nccl_links(
      devices, std::chrono::milliseconds(options.link_timeout_ms),
      cuda::CudaStageOptions{.max_seqs = options.capacity.max_batch, .max_context = max_context},
      config.hidden_size);
#else
  (void)config, (void)devices, (void)max_context;
  fail(ErrorCode::kInternal, "make_links: the cuda backend in a build without it");
#endif
}

std::unique_ptr<Link> make_cuda_peer_link(const ModelConfig& config, const EngineOptions& options,
                                          int64_t max_context, int from, bool sender, int device,
                                          std::unique_ptr<PeerChannel> channel) {
#if CONVEYOR_WITH_CUDA
  // The link carries at most what the receiving CUDA stage takes.
  return cuda_plugin().make_nccl_peer_link(
      std::move(channel),
      cuda::NcclPeerLinkOptions{.sender = sender,
                                .from_stage = from,
                                .device = device,
                                .hidden = config.hidden_size,
                                .timeout = std::chrono::milliseconds(options.link_timeout_ms)},
      cuda::CudaStageOptions{.max_seqs = options.capacity.max_batch, .max_context = max_context});
#else
  (void)config, (void)options, (void)max_context, (void)from, (void)sender, (void)device,
      (void)channel;
  fail(ErrorCode::kInternal, "make_cuda_peer_link: the cuda backend in a build without it");
#endif
}

std::unique_ptr<StageBackend> make_stage_backend(BackendKind backend, const ModelConfig& config,
                                                 StageSource weights, const EngineOptions& options,
                                                 const StageResources& resources) {
  if (backend == BackendKind::kCuda) {
#if CONVEYOR_WITH_CUDA
    const cuda::CudaStageOptions cuda_options{.device = resources.device,
                                              .dtype = options.device.dtype.value_or(DType::kBF16),
                                              .max_seqs = options.capacity.max_batch,
                                              .max_context = resources.max_context,
                                              .cuda_graphs = options.device.cuda_graphs};
    const cuda::Plugin& plugin = cuda_plugin();
    if (const auto* checkpoint = std::get_if<StageCheckpoint>(&weights)) {
      return plugin.make_stage(
          config, load_stage_weights(*checkpoint->tensors, config, checkpoint->spec), cuda_options);
    }
    if (const auto* draws = std::get_if<StageDraws>(&weights)) {
      return plugin.make_stage(config, *draws, cuda_options);
    }
    return plugin.make_stage(config, std::move(std::get<StageWeights>(weights)), cuda_options);
#else
    CONVEYOR_ASSERT(false);  // resolve_backend refuses kCuda in a build without it
#endif
  }
  const cpu::CpuStageOptions cpu_options{.n_threads = options.device.threads_per_stage,
                                         .max_seqs = options.capacity.max_batch,
                                         .max_context = resources.max_context,
                                         .weight_dtype = options.device.dtype.value_or(DType::kF32),
                                         .batch_invariant = options.device.batch_invariant};
  if (const auto* checkpoint = std::get_if<StageCheckpoint>(&weights)) {
    // Each tensor is converted as it is read: the stage never holds itself twice.
    return std::make_unique<cpu::CpuStage>(
        config,
        cpu::load_cpu_weights(*checkpoint->tensors, config, checkpoint->spec,
                              cpu_options.weight_dtype, options.device.map_weights),
        cpu_options);
  }
  StageWeights host = std::holds_alternative<StageDraws>(weights)
                          ? draw_stage_weights(std::get<StageDraws>(weights))
                          : std::move(std::get<StageWeights>(weights));
  return std::make_unique<cpu::CpuStage>(config, std::move(host), cpu_options);
}

}  // namespace conveyor
