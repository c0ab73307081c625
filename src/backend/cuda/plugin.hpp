// The CUDA backend as a plug-in: src/backend/cuda and kernels/ are built into a shared module
// (libconveyor_cuda_plugin.so) that the engine loads the first time a run uses CUDA, so a CPU run
// never maps the CUDA runtime, cuBLAS and cuBLASLt (cuBLASLt alone is ~150 MiB resident once
// loaded). Includes no CUDA header. The engine's side is src/engine/cuda_plugin_loader.hpp.
#pragma once

#include <fmt/format.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backend/cuda/cuda_stage.hpp"
#include "backend/cuda/nccl_peer_link.hpp"
#include "backend/link.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/model_config.hpp"
#include "model/weights.hpp"

namespace conveyor::cuda {

// What the engine calls. One instance lives in the plug-in for the life of the process; every
// call may throw conveyor::Error as the functions it forwards to do.
class Plugin {
 public:
  virtual int device_count() const = 0;                  // cuda::device_count()
  virtual std::string pci_bus_id(int device) const = 0;  // cuda::pci_bus_id()
  virtual std::unique_ptr<StageBackend> make_stage(const ModelConfig& config, StageWeights weights,
                                                   const CudaStageOptions& options) const = 0;
  virtual std::unique_ptr<StageBackend> make_stage(const ModelConfig& config,
                                                   const StageDraws& draws,
                                                   const CudaStageOptions& options) const = 0;
  // NCCL links between `devices` (stage s on devices[s]), each sized for what a stage with
  // `stage_options` takes. Throws kInvalidArgument naming the fix when built without NCCL.
  virtual std::function<std::unique_ptr<Link>(int)> make_nccl_links(
      const std::vector<int>& devices, std::chrono::milliseconds timeout,
      const CudaStageOptions& stage_options, int64_t hidden) const = 0;
  // One end of the link to a neighbouring stage in another process: rows over NCCL, the rest
  // over `channel` (collective with the other end), sized (options.max_tokens) for what a stage
  // with `stage_options` takes. Throws kInvalidArgument naming the fix when built without NCCL.
  virtual std::unique_ptr<Link> make_nccl_peer_link(
      std::unique_ptr<PeerChannel> channel, NcclPeerLinkOptions options,
      const CudaStageOptions& stage_options) const = 0;

 protected:
  ~Plugin() = default;
};

// The module exports two functions. extern "C" const char* conveyor_cuda_plugin_build() returns
// plugin_build_tag(CONVEYOR_BUILD_ID) of the build that made it; the engine compares it with its
// own before it calls anything else, so a module from another build tree (CONVEYOR_BUILD_ID is
// a random string chosen when a tree is configured) or with other struct layouts is refused.
// extern "C" const Plugin* conveyor_cuda_plugin_v2() is the entry; its number changes with this
// interface.
inline constexpr const char* kPluginBuildSymbol = "conveyor_cuda_plugin_build";
inline constexpr const char* kPluginEntry = "conveyor_cuda_plugin_v2";
using PluginBuild = const char* (*)();
using PluginEntry = const Plugin* (*)();

// The build id and the sizes of what crosses the boundary.
inline std::string plugin_build_tag(std::string_view build_id) {
  return fmt::format("{} {} {} {} {} {} {} {} {}", build_id, sizeof(ModelConfig),
                     sizeof(StageWeights), sizeof(StageDraws), sizeof(CudaStageOptions),
                     sizeof(MicroBatch), sizeof(StepContext), sizeof(Activations),
                     sizeof(NcclPeerLinkOptions));
}

}  // namespace conveyor::cuda
