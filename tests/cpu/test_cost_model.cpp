// Tests of the cost model: workloads, per-unit FLOPs and bytes, roofline times, presets, and
// measured profiles (fits, JSON round trip, shape checks).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "common/test_util.hpp"
#include "conveyor/cost_model.hpp"
#include "conveyor/error.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

ModelConfig llama3_8b() {
  return ModelConfig::load(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / ".." / ".." / "configs" /
                           "llama-3-8b.json");
}

TEST(Workload, PrefillAndDecodeCounts) {
  const Workload p = Workload::prefill({.tokens_per_seq = 4, .n_seqs = 2, .past = 3});
  EXPECT_EQ(p.phase, Phase::kPrefill);
  EXPECT_EQ(p.n_tokens, 8);
  // Rows attend to 4, 5, 6, 7 positions in each of 2 sequences.
  EXPECT_EQ(p.attention_pairs, 2 * (4 + 5 + 6 + 7));
  EXPECT_EQ(p.kv_tokens_read, 14);
  EXPECT_EQ(p.n_head_rows, 2);
  EXPECT_EQ(Workload::prefill({.tokens_per_seq = 4, .n_seqs = 2, .past = 3, .all_logits = true})
                .n_head_rows,
            8);

  const Workload d = Workload::decode(3, 100);
  EXPECT_EQ(d.phase, Phase::kDecode);
  EXPECT_EQ(d.n_tokens, 3);
  EXPECT_EQ(d.attention_pairs, 300);
  EXPECT_EQ(d.n_head_rows, 3);
  EXPECT_THROW(Workload::prefill({.tokens_per_seq = 0}), Error);
  EXPECT_THROW(Workload::decode(1, 0), Error);
}

TEST(Workload, OfMicroBatchMatchesFactories) {
  MicroBatch mb{.id = 0, .step = 0, .chunks = {{0, 3, 7, true}, {1, 3, 7, true}}};
  EXPECT_EQ(Workload::of(mb, Phase::kPrefill).attention_pairs,
            Workload::prefill({.tokens_per_seq = 4, .n_seqs = 2, .past = 3}).attention_pairs);
  EXPECT_EQ(Workload::of(mb, Phase::kPrefill).n_head_rows, 2);
  mb.chunks[1].sample = false;  // a chunk that continues later does not sample
  EXPECT_EQ(Workload::of(mb, Phase::kPrefill).n_head_rows, 1);
  EXPECT_EQ(Workload::of(mb, Phase::kPrefill, LogitsRows::kAll).n_head_rows, 8);
  MicroBatch dec{.id = 0, .step = 5, .chunks = {{0, 99, 100, true}, {1, 99, 100, true}}};
  const Workload d = Workload::of(dec, Phase::kDecode);
  EXPECT_EQ(d.attention_pairs, Workload::decode(2, 100).attention_pairs);
  EXPECT_EQ(d.n_tokens, 2);
}

TEST(CostModel, EightBillionShapeCounts) {
  const ModelConfig config = llama3_8b();
  const CostModel model(config);  // bf16 weights
  // 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336 + 2 * 4096 norms.
  const int64_t layer_params = 4096LL * 6144 + 4096LL * 4096 + 3LL * 4096 * 14336 + 2 * 4096;
  EXPECT_EQ(config.layer_params(), layer_params);
  EXPECT_EQ(model.layer_weight_bytes(), 2 * layer_params);
  EXPECT_EQ(model.embedding_weight_bytes(), 2LL * 128256 * 4096);
  EXPECT_EQ(model.kv_bytes_per_token_per_layer(), 2LL * 8 * 128 * 2);

  const Workload p = Workload::prefill({.tokens_per_seq = 512});
  const UnitCost layer = model.cost(UnitKind::kDecoderLayer, p);
  const double matmul = 4096.0 * 6144 + 4096.0 * 4096 + 3.0 * 4096 * 14336;
  EXPECT_DOUBLE_EQ(layer.flops, 2.0 * 512 * matmul + 4.0 * 4096 * (512.0 * 513 / 2));
  EXPECT_EQ(layer.activation_bytes, 512 * 4096 * 2);
  const UnitCost head = model.cost(UnitKind::kHead, Workload::decode(1, 100));
  EXPECT_DOUBLE_EQ(head.flops, 2.0 * 4096 * 128256 + 4.0 * 4096);
  EXPECT_EQ(model.cost(UnitKind::kEmbedding, p).flops, 0.0);
}

TEST(CostModel, HeadCostsTwoToThreeLayersInDecodeOnH100) {
  const CostModel model(llama3_8b());
  const DeviceSpec h100 = device_preset("h100");
  const Workload d = Workload::decode(1, 4096);
  const double layer = model.seconds(UnitKind::kDecoderLayer, d, h100);
  const double head = model.seconds(UnitKind::kHead, d, h100);
  EXPECT_GT(head / layer, 2.0);
  EXPECT_LT(head / layer, 3.0);
  // Decode is memory bound: about the layer's bytes over the achieved bandwidth.
  const double bytes_time = static_cast<double>(model.layer_weight_bytes()) /
                            (h100.memory_bandwidth * h100.bandwidth_efficiency);
  EXPECT_GT(layer, bytes_time);
  EXPECT_LT(layer, 1.2 * bytes_time);
  // A 4096-token prefill is compute bound.
  const Workload p = Workload::prefill({.tokens_per_seq = 4096});
  const UnitCost c = model.cost(UnitKind::kDecoderLayer, p);
  EXPECT_NEAR(model.seconds(UnitKind::kDecoderLayer, p, h100),
              c.flops / (h100.peak_flops * h100.flops_efficiency) + h100.unit_overhead_s, 1e-9);
  // In prefill the head projects one row per sequence: cheap.
  EXPECT_LT(model.seconds(UnitKind::kHead, p, h100),
            model.seconds(UnitKind::kDecoderLayer, p, h100));
}

TEST(CostModel, PresetsAndErrors) {
  for (const std::string& name : device_preset_names()) {
    const DeviceSpec d = device_preset(name);
    EXPECT_NO_THROW(d.validate()) << name;
    EXPECT_GT(d.memory_bytes, 0) << name;
  }
  for (const std::string& name : link_preset_names())
    EXPECT_NO_THROW(link_preset(name).validate());
  EXPECT_GT(device_preset("h200").memory_bytes, device_preset("h100").memory_bytes);
  EXPECT_GT(device_preset("h200").memory_bandwidth, device_preset("h100").memory_bandwidth);
  try {
    device_preset("tpu");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("h100"), std::string::npos) << e.what();
  }
  EXPECT_THROW(link_preset("carrier-pigeon"), Error);
  const LinkSpec nvlink = link_preset("nvlink");
  EXPECT_NEAR(nvlink.seconds(400'000'000), nvlink.latency_s + 1e-3, 1e-12);
  DeviceSpec bad = device_preset("h100");
  bad.flops_efficiency = 1.5;
  EXPECT_THROW(bad.validate(), Error);
}

Profile synthetic_profile(const ModelConfig& config) {
  Profile p;
  p.device = "synthetic";
  p.model_shape = model_shape_key(config);
  // t = 100 us + 2 us/token + 0.01 us/pair for a layer's prefill, exactly.
  for (int64_t t : {16, 64, 128, 256, 512}) {
    for (int64_t past : {0, 256}) {
      const Workload w = Workload::prefill({.tokens_per_seq = t, .past = past});
      p.samples.push_back({UnitKind::kDecoderLayer, Phase::kPrefill, w.n_tokens, w.attention_pairs,
                           100e-6 + 2e-6 * w.n_tokens + 0.01e-6 * w.attention_pairs});
      p.samples.push_back(
          {UnitKind::kEmbedding, Phase::kPrefill, w.n_tokens, 0, 5e-6 + 0.1e-6 * w.n_tokens});
    }
  }
  for (int64_t b : {1, 2, 4, 8}) {
    for (int64_t c : {64, 512}) {
      const Workload w = Workload::decode(b, c);
      p.samples.push_back({UnitKind::kDecoderLayer, Phase::kDecode, b, w.attention_pairs,
                           300e-6 + 10e-6 * b + 0.02e-6 * w.attention_pairs});
    }
    p.samples.push_back({UnitKind::kHead, Phase::kDecode, b, 0, 1e-3 + 0.5e-3 * b});
    p.samples.push_back({UnitKind::kHead, Phase::kPrefill, b, 0, 1e-3 + 0.5e-3 * b});
  }
  p.link_latency_s = 30e-6;
  p.step_overhead_s = 50e-6;
  p.fit();
  return p;
}

TEST(Profile, FitRecoversLinearTimes) {
  const ModelConfig config = preset_config("small");
  const Profile p = synthetic_profile(config);
  EXPECT_NEAR(p.layer_prefill.base_s, 100e-6, 1e-9);
  EXPECT_NEAR(p.layer_prefill.per_token_s, 2e-6, 1e-11);
  EXPECT_NEAR(p.layer_prefill.per_pair_s, 0.01e-6, 1e-13);
  EXPECT_NEAR(p.layer_decode.base_s, 300e-6, 1e-9);
  EXPECT_NEAR(p.layer_decode.per_token_s, 10e-6, 1e-10);
  EXPECT_NEAR(p.layer_decode.per_pair_s, 0.02e-6, 1e-13);
  EXPECT_NEAR(p.head_decode.base_s, 1e-3, 1e-9);
  EXPECT_NEAR(p.head_decode.per_token_s, 0.5e-3, 1e-9);
  EXPECT_NEAR(p.embedding_prefill.per_token_s, 0.1e-6, 1e-12);
  EXPECT_EQ(p.embedding_decode, TimeFit{});  // no samples: zero

  const CostModel model(config, {.weight_dtype = DType::kF32});
  DeviceSpec cpu = device_preset("cpu");
  cpu.profile = p;
  const Workload w = Workload::prefill({.tokens_per_seq = 300, .past = 100});
  EXPECT_NEAR(model.seconds(UnitKind::kDecoderLayer, w, cpu),
              100e-6 + 2e-6 * 300 + 0.01e-6 * w.attention_pairs, 1e-9);
  EXPECT_NEAR(model.seconds(UnitKind::kHead, Workload::decode(3, 10), cpu), 2.5e-3, 1e-9);
  EXPECT_NEAR(model.send_seconds(w, link_preset("nvlink"), cpu), 30e-6, 1e-12);
  EXPECT_NEAR(model.stage_seconds({.n_layers = 2, .embedding = true}, w, cpu),
              2 * model.seconds(UnitKind::kDecoderLayer, w, cpu) +
                  model.seconds(UnitKind::kEmbedding, w, cpu),
              1e-12);
}

TEST(Profile, FitNeverGoesNegative) {
  // Times that fall with the token count while the pairs grow: an unconstrained fit answers with
  // a negative per-token cost (and negative times for short prompts with no past). The fit keeps
  // every coefficient >= 0 and still follows the samples as closely as that allows.
  Profile p;
  const std::vector<std::array<double, 3>> samples = {
      {32, 528, 1.0e-3}, {64, 2080, 0.9e-3}, {128, 8256, 1.1e-3}, {256, 32896, 2.0e-3}};
  for (const auto& [x, y, s] : samples) {
    p.samples.push_back({UnitKind::kDecoderLayer, Phase::kPrefill, static_cast<int64_t>(x),
                         static_cast<int64_t>(y), s});
  }
  p.fit();
  const TimeFit& f = p.layer_prefill;
  EXPECT_GE(f.base_s, 0.0);
  EXPECT_GE(f.per_token_s, 0.0);
  EXPECT_GE(f.per_pair_s, 0.0);
  EXPECT_GT(f.at(256), 0.0);
  // It is the best non-negative fit: no small non-negative change lowers the squared error.
  auto error = [&](const TimeFit& g) {
    double e = 0.0;
    for (const auto& [x, y, s] : samples)
      e += (g.at(x, y) - s) * (g.at(x, y) - s);
    return e;
  };
  for (const TimeFit& g : {TimeFit{f.base_s * 1.01, f.per_token_s, f.per_pair_s},
                           TimeFit{f.base_s * 0.99, f.per_token_s, f.per_pair_s},
                           TimeFit{f.base_s, f.per_token_s + 1e-9, f.per_pair_s},
                           TimeFit{f.base_s, f.per_token_s, f.per_pair_s * 1.01},
                           TimeFit{f.base_s, f.per_token_s, f.per_pair_s * 0.99}}) {
    EXPECT_GE(error(g), error(f));
  }
}

TEST(Profile, JsonRoundTripAndErrors) {
  const ModelConfig config = preset_config("small");
  const Profile p = synthetic_profile(config);
  test::TempDir dir;
  const auto path = dir.path() / "profile.json";
  p.save(path);
  const Profile q = Profile::load(path);
  EXPECT_EQ(q.model_shape, p.model_shape);
  EXPECT_EQ(q.device, "synthetic");
  EXPECT_NEAR(q.layer_prefill.per_token_s, p.layer_prefill.per_token_s, 1e-15);
  EXPECT_NEAR(q.head_decode.base_s, p.head_decode.base_s, 1e-15);
  EXPECT_NEAR(q.step_overhead_s, 50e-6, 1e-15);
  EXPECT_EQ(q.samples.size(), p.samples.size());

  auto expect_format_error = [](const std::string& text, const std::string& part) {
    try {
      Profile::from_json(text, "p.json");
      ADD_FAILURE() << "no error for " << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kModelFormat);
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_format_error("{", "not valid JSON");
  expect_format_error(R"({"format": "other"})", "not a conveyor profile");
  expect_format_error(R"({"format": "conveyor-profile", "model_shape": "x"})", "link");
  expect_format_error(
      R"({"format": "conveyor-profile", "model_shape": "x", "link": {"latency_s": "a", "s_per_byte": 0}})",
      "latency_s");
  EXPECT_THROW(Profile::load(dir.path() / "missing.json"), Error);
}

TEST(Profile, ShapeMismatchIsRefused) {
  const Profile p = synthetic_profile(preset_config("small"));
  const CostModel tiny(preset_config("tiny"));
  try {
    tiny.check_profile(p);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("h768"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("conveyor-bench --profile"), std::string::npos);
  }
  // Another layer count of the same shape is fine: one layer's time does not depend on it.
  ModelConfig deeper = preset_config("small");
  deeper.n_layers = 24;
  EXPECT_NO_THROW(CostModel(deeper).check_profile(p));
}

}  // namespace
}  // namespace conveyor
