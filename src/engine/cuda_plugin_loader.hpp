// Finding and loading the CUDA plug-in (backend/cuda/plugin.hpp), once per process.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/plugin.hpp"

namespace conveyor {

// Where the module is looked for, in order: $CONVEYOR_CUDA_PLUGIN alone when it is set; else
// beside the running executable (its folder, then ../lib: build/lib for the build tree's
// binaries), then the install prefix's library folder.
std::vector<std::filesystem::path> cuda_plugin_candidates();

struct CudaPluginLoad {
  const cuda::Plugin* plugin = nullptr;  // nullptr: `error` says why
  std::filesystem::path path;            // the module loaded
  std::string error;
};
// Loads the first candidate that exists (dlopen, local symbols) and checks that it is a conveyor
// CUDA plug-in of this build (plugin_build_tag). Never throws.
CudaPluginLoad load_cuda_plugin(std::span<const std::filesystem::path> candidates);

// The process' plug-in, loaded from cuda_plugin_candidates() on first use. Throws
// conveyor::Error(kInvalidArgument) with the load error, the paths tried and the fix.
const cuda::Plugin& cuda_plugin();

// CUDA devices visible to this process. 0 without loading the plug-in where no NVIDIA driver is
// installed (libcuda.so.1 cannot be opened), so a CPU machine never maps the CUDA libraries;
// otherwise the plug-in's count (throws as cuda_plugin() does when it cannot be loaded).
int cuda_device_count();

}  // namespace conveyor
