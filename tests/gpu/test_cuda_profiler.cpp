// measure_profile on CUDA stages (the profiler is backend-neutral): every unit sampled, fits
// finite, the device named. Skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "common/test_util.hpp"
#include "conveyor/profiler.hpp"
#include "gpu_test_util.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

TEST(CudaProfiler, MeasuresEveryUnitOfACudaStage) {
  CONVEYOR_REQUIRE_CUDA_DEVICE();
  test::TempDir dir;
  ModelConfig config = preset_config("tiny");
  config.hidden_size = 256;
  config.intermediate_size = 512;
  config.head_dim = 64;
  std::ofstream(dir.path() / "config.json") << config.to_json();
  const Profile p = measure_profile(
      dir.path() / "config.json",
      {.device = {.backend = BackendKind::kCuda}, .repeats = 2, .random_weights_seed = 5});
  EXPECT_NE(p.device.find("cuda device 0"), std::string::npos) << p.device;
  EXPECT_EQ(p.host_cores, 0.0);  // not measured for devices
  EXPECT_GE(p.samples.size(), 20u);
  for (const ProfileSample& s : p.samples)
    EXPECT_GT(s.seconds, 0.0);
  EXPECT_TRUE(std::isfinite(p.layer_prefill.per_token_s));
  EXPECT_GT(p.layer_prefill.at(512), p.layer_prefill.at(1));
}

}  // namespace
}  // namespace conveyor
