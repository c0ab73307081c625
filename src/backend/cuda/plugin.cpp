// The CUDA plug-in's entry point: forwards the engine's calls to the CUDA backend built into the
// same module (plugin.hpp).
#include "backend/cuda/plugin.hpp"

#include <string>
#include <utility>

#include "core/check.hpp"

#ifndef CONVEYOR_HAVE_NCCL
#define CONVEYOR_HAVE_NCCL 0
#endif
#if CONVEYOR_HAVE_NCCL
#include "backend/cuda/nccl_link.hpp"
#include "backend/cuda/nccl_peer_link.hpp"
#endif

namespace conveyor::cuda {
namespace {

class CudaPlugin final : public Plugin {
 public:
  int device_count() const override { return cuda::device_count(); }
  std::string pci_bus_id(int device) const override { return cuda::pci_bus_id(device); }
  std::unique_ptr<StageBackend> make_stage(const ModelConfig& config, StageWeights weights,
                                           const CudaStageOptions& options) const override {
    return make_cuda_stage(config, std::move(weights), options);
  }
  std::unique_ptr<StageBackend> make_stage(const ModelConfig& config, const StageDraws& draws,
                                           const CudaStageOptions& options) const override {
    return make_cuda_stage(config, draws, options);
  }
  std::function<std::unique_ptr<Link>(int)> make_nccl_links(const std::vector<int>& devices,
                                                            std::chrono::milliseconds timeout,
                                                            const CudaStageOptions& stage_options,
                                                            int64_t hidden) const override {
#if CONVEYOR_HAVE_NCCL
    auto world = std::make_shared<NcclWorld>(devices, timeout);
    const int64_t max_tokens = stage_options.effective_max_tokens();
    return [world, max_tokens, hidden](int from) -> std::unique_ptr<Link> {
      return std::make_unique<NcclLink>(world, from, max_tokens, hidden, /*capacity=*/2);
    };
#else
    (void)devices, (void)timeout, (void)stage_options, (void)hidden;
    fail(ErrorCode::kInvalidArgument,
         "the nccl transport was requested but this conveyor was built without NCCL; install "
         "NCCL (its header and library) and rebuild, or use --transport local");
#endif
  }
  std::unique_ptr<Link> make_nccl_peer_link(std::unique_ptr<PeerChannel> channel,
                                            NcclPeerLinkOptions options,
                                            const CudaStageOptions& stage_options) const override {
#if CONVEYOR_HAVE_NCCL
    options.max_tokens = stage_options.effective_max_tokens();
    return std::make_unique<NcclPeerLink>(std::move(channel), options);
#else
    (void)channel, (void)options, (void)stage_options;
    fail(ErrorCode::kInvalidArgument,
         "CUDA stages in several processes pass activations over NCCL, but this conveyor was "
         "built without NCCL; install NCCL (its header and library) and rebuild, or run the "
         "stages in one process");
#endif
  }
};

}  // namespace
}  // namespace conveyor::cuda

extern "C" __attribute__((visibility("default"))) const char* conveyor_cuda_plugin_build() {
  static const std::string tag = conveyor::cuda::plugin_build_tag(CONVEYOR_BUILD_ID);
  return tag.c_str();
}

extern "C" __attribute__((visibility("default"))) const conveyor::cuda::Plugin*
conveyor_cuda_plugin_v2() {
  static const conveyor::cuda::CudaPlugin plugin;
  return &plugin;
}
