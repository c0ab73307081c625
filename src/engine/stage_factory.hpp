// Which backend runs the stages, and building one stage's backend from its weights.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "backend/link.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/engine.hpp"
#include "model/weights.hpp"

namespace conveyor {

// Resolves kAuto (CUDA when built in and a device is present, else CPU) and checks that the
// requested backend is available, with an error naming the fix when it is not.
BackendKind resolve_backend(BackendKind requested);

// CPU backend: refuses, before anything is allocated, a model whose weights in `weight_dtype` do
// not fit the host's available memory (MemAvailable), so a model too large for the host is an
// error naming the sizes rather than the out-of-memory killer. (KV caches grow with use and are
// not counted.) Skipped when the available memory cannot be read.
void check_host_memory(const ModelConfig& config, DType weight_dtype, int processes = 1);

// CUDA device of each of `n_stages` stages: options.cuda_devices, or 0..S-1 when empty. Checks
// the count and that the ids of stages [first, end) (the ones this process runs; end < 0: all)
// exist here; stages may share a device.
std::vector<int> stage_devices(const DeviceOptions& options, int n_stages, int first = 0,
                               int end = -1);

// Which physical GPU CUDA device `device` of this process is (its PCI bus id).
std::string cuda_pci_bus_id(int device);

struct StageResources {
  int stage = 0;
  int device = 0;           // CUDA only
  int64_t max_context = 0;  // KV positions per sequence
};

// The links between stages for options.transport: empty (the pipeline's in-process links) for
// kLocal; for kNccl, NCCL links over one communicator of `devices` (CUDA backend, NCCL built in,
// one distinct GPU per stage), created here so that their errors come before any weights load.
std::function<std::unique_ptr<Link>(int)> make_links(BackendKind backend, const ModelConfig& config,
                                                     const EngineOptions& options,
                                                     const std::vector<int>& devices,
                                                     int64_t max_context);

// One end of the link between this process' CUDA stage and its neighbour's in another process:
// rows over NCCL (one GPU per process), everything else over `channel`. `sender`: this process
// runs stage `from`, else from + 1, on `device`. Collective with the other end.
std::unique_ptr<Link> make_cuda_peer_link(const ModelConfig& config, const EngineOptions& options,
                                          int64_t max_context, int from, bool sender, int device,
                                          std::unique_ptr<PeerChannel> channel);

// Builds the stage from weights read from a checkpoint or from the recipe of random ones (drawn
// on the host for the CPU backend, on the device for CUDA).
std::unique_ptr<StageBackend> make_stage_backend(BackendKind backend, const ModelConfig& config,
                                                 StageSource weights, const EngineOptions& options,
                                                 const StageResources& resources);

}  // namespace conveyor
