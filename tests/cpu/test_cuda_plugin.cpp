// The CUDA plug-in's loader (src/engine/cuda_plugin_loader.hpp): errors that name what was
// tried, refusal of a library that is not the plug-in, the module of this build loading on a
// machine without a GPU, and a CPU run that never maps the CUDA libraries.
#include <dlfcn.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <link.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "engine/cuda_plugin_loader.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

using ::testing::HasSubstr;

std::string process_maps() {
  std::ifstream maps("/proc/self/maps");
  return {std::istreambuf_iterator<char>(maps), std::istreambuf_iterator<char>()};
}

bool driver_installed() {
  void* handle = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD);
  if (handle == nullptr) handle = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  return handle != nullptr;
}

TEST(CudaPlugin, AMissingModuleNamesEveryPathTried) {
  const std::vector<std::filesystem::path> paths = {"/nonexistent/a/libx.so", "/nonexistent/b.so"};
  const CudaPluginLoad load = load_cuda_plugin(paths);
  EXPECT_EQ(load.plugin, nullptr);
  EXPECT_THAT(load.error, HasSubstr("libconveyor_cuda_plugin.so was not found"));
  EXPECT_THAT(load.error, HasSubstr("/nonexistent/a/libx.so, /nonexistent/b.so"));
}

TEST(CudaPlugin, ALibraryThatIsNotThePluginIsRefusedByName) {
  void* libm = dlopen("libm.so.6", RTLD_LAZY | RTLD_LOCAL);
  ASSERT_NE(libm, nullptr) << dlerror();
  link_map* map = nullptr;
  ASSERT_EQ(dlinfo(libm, RTLD_DI_LINKMAP, &map), 0) << dlerror();
  const std::filesystem::path path = map->l_name;
  const std::vector<std::filesystem::path> paths = {"/nonexistent/first.so", path};
  const CudaPluginLoad load = load_cuda_plugin(paths);
  EXPECT_EQ(load.plugin, nullptr);
  EXPECT_EQ(load.path, path);
  EXPECT_THAT(load.error, HasSubstr("has no conveyor_cuda_plugin_build"));
  dlclose(libm);
}

TEST(CudaPlugin, TheEnvironmentVariableIsTheOnlyPlaceLookedAt) {
  ::setenv("CONVEYOR_CUDA_PLUGIN", "/opt/x/libconveyor_cuda_plugin.so", 1);
  const std::vector<std::filesystem::path> paths = cuda_plugin_candidates();
  ::unsetenv("CONVEYOR_CUDA_PLUGIN");
  EXPECT_EQ(paths, (std::vector<std::filesystem::path>{"/opt/x/libconveyor_cuda_plugin.so"}));
  // Without it: beside the executable, then ../lib (build/lib for this test), then the prefix.
  const std::vector<std::filesystem::path> defaults = cuda_plugin_candidates();
  const std::filesystem::path dir = std::filesystem::read_symlink("/proc/self/exe").parent_path();
  ASSERT_GE(defaults.size(), 2u);
  EXPECT_EQ(defaults[0], dir / "libconveyor_cuda_plugin.so");
  EXPECT_EQ(defaults[1], dir.parent_path() / "lib" / "libconveyor_cuda_plugin.so");
}

// A CPU run (the default backend, and kAuto without a driver) opens an engine, generates and
// never maps the CUDA runtime or cuBLAS: they live in the plug-in, loaded only for CUDA.
TEST(CudaPlugin, ACpuRunNeverMapsTheCudaLibraries) {
  if (process_maps().find("libcublas") != std::string::npos) {
    GTEST_SKIP() << "another test in this process already loaded the CUDA plug-in";
  }
  if (driver_installed()) GTEST_SKIP() << "an NVIDIA driver is installed: kAuto loads the plug-in";
  test::TempDir dir("conveyor-cuda-plugin");
  std::ofstream(dir.path() / "config.json") << preset_config("tiny").to_json();
  for (BackendKind backend : {BackendKind::kCpu, BackendKind::kAuto}) {
    Engine engine =
        Engine::open(dir.path(), {.device = {.backend = backend}, .random_weights_seed = 1});
    const GenerateResult result = engine.generate(test::mixed_requests(2), {});
    ASSERT_FALSE(result.requests.empty());
    EXPECT_FALSE(result.requests.front().tokens.empty());
  }
  const std::string maps = process_maps();
  EXPECT_EQ(maps.find("libcublas"), std::string::npos);
  EXPECT_EQ(maps.find("libcudart"), std::string::npos);
  EXPECT_EQ(maps.find("libconveyor_cuda_plugin"), std::string::npos);
}

// The module this build made loads (with the CUDA runtime and cuBLAS it links) on any machine
// with the CUDA libraries, and counts the devices: none on a machine without a GPU.
TEST(CudaPlugin, TheModuleOfThisBuildLoadsAndCountsDevices) {
  std::vector<std::filesystem::path> built;
  for (const std::filesystem::path& path : cuda_plugin_candidates()) {
    if (std::filesystem::is_regular_file(path)) built.push_back(path);
  }
  if (built.empty()) GTEST_SKIP() << "this build has no CUDA plug-in (built without CUDA)";
  const CudaPluginLoad load = load_cuda_plugin(built);
  ASSERT_NE(load.plugin, nullptr) << load.error;
  EXPECT_NE(process_maps().find("libconveyor_cuda_plugin"), std::string::npos);
  if (!driver_installed()) {
    EXPECT_EQ(load.plugin->device_count(), 0);
    EXPECT_EQ(cuda_device_count(), 0);  // without loading the module again
  }
  // An error raised inside the module is a conveyor::Error here (the module's copy of the type
  // matches by name): bad options are refused before any device is touched.
  const ModelConfig config = preset_config("tiny");
  try {
    (void)load.plugin->make_stage(config, StageWeights{}, cuda::CudaStageOptions{.max_seqs = 0});
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_THAT(e.what(), HasSubstr("max_seqs"));
  }
}

}  // namespace
}  // namespace conveyor
