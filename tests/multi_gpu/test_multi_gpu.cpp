// Tests that need two CUDA devices (CTest labels gpu and multi_gpu): stages on two GPUs match
// stages sharing one (peer copies), and the engine over NCCL links matches the local transport
// and survives a fault (the world is rebuilt after the failed step). Skip with fewer devices.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <fstream>
#include <vector>

#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

class TwoGpus : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 2) {
      GTEST_SKIP() << "needs 2 CUDA devices (found " << count << ")";
    }
    ModelConfig config = preset_config("tiny");
    config.hidden_size = 256;
    config.intermediate_size = 512;
    config.head_dim = 64;
    std::ofstream(dir_.path() / "config.json") << config.to_json();
  }

  EngineOptions options(std::vector<int> devices) const {
    EngineOptions o;
    o.n_stages = 2;
    o.device.backend = BackendKind::kCuda;
    o.device.cuda_devices = std::move(devices);
    o.random_weights_seed = 9;
    o.schedule.prefill_micro_batches = 3;
    return o;
  }

  static void expect_same(const GenerateResult& got, const GenerateResult& expected,
                          const char* what) {
    ASSERT_EQ(got.requests.size(), expected.requests.size()) << what;
    for (size_t r = 0; r < got.requests.size(); ++r) {
      EXPECT_EQ(got.requests[r].tokens, expected.requests[r].tokens) << what << " request " << r;
      EXPECT_LE(test::relative_error(got.requests[r].logits, expected.requests[r].logits), 1e-5)
          << what << " request " << r;
    }
  }

  test::TempDir dir_;
  const std::vector<Request> requests_ = test::mixed_requests();
  const GenerateOptions logits_{.return_logits = true};
};

TEST_F(TwoGpus, StagesOnTwoDevicesMatchStagesSharingOne) {
  const GenerateResult one =
      Engine::open(dir_.path(), options({0, 0})).generate(requests_, logits_);
  const GenerateResult two =
      Engine::open(dir_.path(), options({0, 1})).generate(requests_, logits_);
  expect_same(two, one, "peer copies");
}

TEST_F(TwoGpus, NcclMatchesTheLocalTransportAndRecoversFromAFault) {
  const GenerateResult expected =
      Engine::open(dir_.path(), options({0, 1})).generate(requests_, logits_);
  EngineOptions nccl = options({0, 1});
  nccl.device.transport = Transport::kNccl;
  expect_same(Engine::open(dir_.path(), nccl).generate(requests_, logits_), expected, "nccl");
  // Stage 1's first Recv of a decode step fails.
  auto faults = test::FaultInjector::create({.stage = 1, .step = 1, .instruction = 0});
  Engine faulty = faults->hooks().open(dir_.path(), nccl);
  test::expect_error([&] { faulty.generate(requests_, logits_); }, ErrorCode::kInternal,
                     {"stage 1 failed", "injected fault"});
  expect_same(faulty.generate(requests_, logits_), expected, "nccl after a failed step");
}

}  // namespace
}  // namespace conveyor
