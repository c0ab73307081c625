// Loading the CUDA plug-in with dlopen; see cuda_plugin_loader.hpp.
#include "engine/cuda_plugin_loader.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdlib>
#include <cstring>
#include <system_error>

#include "core/check.hpp"

#ifndef CONVEYOR_CUDA_PLUGIN_INSTALL_PATH
#define CONVEYOR_CUDA_PLUGIN_INSTALL_PATH ""
#endif
#ifndef CONVEYOR_BUILD_ID
#define CONVEYOR_BUILD_ID "unknown"
#endif

namespace conveyor {

namespace {

constexpr const char* kModuleName = "libconveyor_cuda_plugin.so";

std::string dl_error() {
  const char* message = dlerror();
  return message != nullptr ? message : "unknown dlopen error";
}

}  // namespace

std::vector<std::filesystem::path> cuda_plugin_candidates() {
  if (const char* env = std::getenv("CONVEYOR_CUDA_PLUGIN"); env != nullptr && *env != '\0') {
    return {env};
  }
  std::vector<std::filesystem::path> paths;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    paths.push_back(exe.parent_path() / kModuleName);
    paths.push_back(exe.parent_path().parent_path() / "lib" / kModuleName);
  }
  // The build tree's binaries find theirs as ../lib (build/lib); installed ones, in the prefix.
  if (*CONVEYOR_CUDA_PLUGIN_INSTALL_PATH != '\0')
    paths.emplace_back(CONVEYOR_CUDA_PLUGIN_INSTALL_PATH);
  return paths;
}

CudaPluginLoad load_cuda_plugin(std::span<const std::filesystem::path> candidates) {
  CudaPluginLoad load;
  for (const std::filesystem::path& path : candidates) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) continue;
    load.path = path;
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      load.error = fmt::format("{} could not be loaded: {}", path.string(), dl_error());
      return load;
    }
    const auto build = reinterpret_cast<cuda::PluginBuild>(dlsym(handle, cuda::kPluginBuildSymbol));
    const auto entry = reinterpret_cast<cuda::PluginEntry>(dlsym(handle, cuda::kPluginEntry));
    if (build == nullptr || entry == nullptr) {
      load.error =
          fmt::format("{} has no {} (not a CUDA plug-in of this conveyor version)", path.string(),
                      build == nullptr ? cuda::kPluginBuildSymbol : cuda::kPluginEntry);
      dlclose(handle);
      return load;
    }
    const std::string ours = cuda::plugin_build_tag(CONVEYOR_BUILD_ID);
    if (ours != build()) {
      load.error = fmt::format(
          "{} comes from another build of conveyor (build \"{}\", this program is build \"{}\"); "
          "use the plug-in built and installed with this program",
          path.string(), build(), ours);
      dlclose(handle);  // nothing of it has run but its constructors
      return load;
    }
    load.plugin = entry();  // never unloaded: stages made by it may live until exit
    return load;
  }
  std::vector<std::string> tried;
  for (const std::filesystem::path& path : candidates)
    tried.push_back(path.string());
  load.error = fmt::format(
      "{} was not found (looked for {})", kModuleName,
      tried.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(tried, ", ")));
  return load;
}

const cuda::Plugin& cuda_plugin() {
  static const CudaPluginLoad load = load_cuda_plugin(cuda_plugin_candidates());
  if (load.plugin == nullptr) {
    fail(ErrorCode::kInvalidArgument,
         "the CUDA backend is a plug-in that could not be loaded: {}; build the "
         "conveyor_cuda_plugin target (it is built with the engine), set CONVEYOR_CUDA_PLUGIN to "
         "its path, or use the cpu backend",
         load.error);
  }
  return *load.plugin;
}

int cuda_device_count() {
  static const bool driver = [] {
    // Kept open: the CUDA runtime opens the same library when the plug-in loads.
    return dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL) != nullptr;
  }();
  if (!driver) return 0;
  return cuda_plugin().device_count();
}

}  // namespace conveyor
