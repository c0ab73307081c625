// Tests of measure_profile (the library profiler over StageBackend): every unit is sampled, the
// fits are finite and grow with the work, and a profile of the right shape is accepted by the
// cost model; random-weights models profile from a bare config.json.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "common/test_util.hpp"
#include "conveyor/cost_model.hpp"
#include "conveyor/profiler.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

TEST(Profiler, MeasuresEveryUnitOfACpuStage) {
  test::TempDir dir;
  test::make_tiny_model(dir.path(), 2);
  const Profile p = measure_profile(dir.path(), {.repeats = 3, .max_context = 1024});
  int layer_prefill = 0, layer_decode = 0, embedding = 0, head = 0;
  for (const ProfileSample& s : p.samples) {
    EXPECT_GT(s.seconds, 0.0);
    layer_prefill += s.unit == UnitKind::kDecoderLayer && s.phase == Phase::kPrefill;
    layer_decode += s.unit == UnitKind::kDecoderLayer && s.phase == Phase::kDecode;
    embedding += s.unit == UnitKind::kEmbedding;
    head += s.unit == UnitKind::kHead;
  }
  EXPECT_GE(layer_prefill, 5);
  EXPECT_EQ(layer_decode, 8);
  EXPECT_EQ(embedding, 8);
  EXPECT_EQ(head, 8);
  // A layer pass over 256 tokens takes longer than over one (medians of 3, so one preempted
  // timing on a loaded machine does not tilt the fit), and every fit is finite.
  EXPECT_GT(p.layer_prefill.at(256), p.layer_prefill.at(1));
  for (const TimeFit* f : {&p.layer_prefill, &p.layer_decode, &p.head_prefill}) {
    EXPECT_TRUE(std::isfinite(f->base_s) && std::isfinite(f->per_token_s)) << f->base_s;
  }
  EXPECT_GT(p.link_latency_s, 0.0);
  EXPECT_GT(p.host_cores, 0.0);
  CostModel(ModelConfig::load(dir.path())).check_profile(p);  // same shape: accepted
}

TEST(Profiler, RandomWeightsNeedOnlyTheConfig) {
  test::TempDir dir;
  ModelConfig config = preset_config("tiny");
  config.n_layers = 1;
  std::ofstream(dir.path() / "config.json") << config.to_json();
  const Profile p = measure_profile(dir.path() / "config.json",
                                    {.repeats = 1, .max_context = 128, .random_weights_seed = 4});
  EXPECT_EQ(p.model_shape, model_shape_key(config));
  EXPECT_FALSE(p.samples.empty());
  test::expect_invalid([&] { measure_profile(dir.path(), {.repeats = 0}); }, {"repeats is 0"});
}

}  // namespace
}  // namespace conveyor
