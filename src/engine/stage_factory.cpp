// Backend selection and stage construction for the Engine.
#include "engine/stage_factory.hpp"

#include "backend/cpu/cpu_stage.hpp"
#include "core/check.hpp"

// cmake/cuda.cmake defines CONVEYOR_WITH_CUDA=1 when it links the CUDA backend in.
#ifndef CONVEYOR_WITH_CUDA
#define CONVEYOR_WITH_CUDA 0
#endif
#if CONVEYOR_WITH_CUDA
#include "backend/cuda/cuda_stage.hpp"
#endif

namespace conveyor {

namespace {

int device_count() {
#if CONVEYOR_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

}  // namespace

BackendKind resolve_backend(BackendKind requested) {
  if (requested == BackendKind::kAuto) {
    return device_count() > 0 ? BackendKind::kCuda : BackendKind::kCpu;
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

std::vector<int> stage_devices(const EngineOptions& options) {
  std::vector<int> devices = options.devices;
  if (devices.empty()) {
    for (int s = 0; s < options.n_stages; ++s)
      devices.push_back(s);
  }
  if (static_cast<int>(devices.size()) != options.n_stages) {
    fail(ErrorCode::kInvalidArgument,
         "{} devices listed for {} stages; give one device id per stage (repeat an id to share a "
         "device, e.g. --devices 0,0,0,0)",
         devices.size(), options.n_stages);
  }
  const int available = device_count();
  for (size_t s = 0; s < devices.size(); ++s) {
    if (devices[s] < 0 || devices[s] >= available) {
      fail(ErrorCode::kInvalidArgument,
           "stage {} is assigned CUDA device {} but {} device{} visible (ids 0..{}); with fewer "
           "GPUs than stages, let stages share a device (--devices 0,0,...)",
           s, devices[s], available, available == 1 ? " is" : "s are", available - 1);
    }
  }
  return devices;
}

std::unique_ptr<StageBackend> make_stage_backend(BackendKind backend, const ModelConfig& config,
                                                 StageWeights weights, const EngineOptions& options,
                                                 const StageResources& resources) {
  if (backend == BackendKind::kCuda) {
#if CONVEYOR_WITH_CUDA
    return cuda::make_cuda_stage(config, std::move(weights),
                                 cuda::CudaStageOptions{.device = resources.device,
                                                        .dtype = options.device_dtype,
                                                        .max_seqs = options.max_batch,
                                                        .max_context = resources.max_context});
#else
    CONVEYOR_ASSERT(false);  // resolve_backend refuses kCuda in a build without it
#endif
  }
  return std::make_unique<cpu::CpuStage>(
      config, std::move(weights),
      cpu::CpuStageOptions{.n_threads = options.threads_per_stage,
                           .max_seqs = options.max_batch,
                           .max_context = resources.max_context});
}

}  // namespace conveyor
