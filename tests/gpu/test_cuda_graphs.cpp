// Decode CUDA graphs: the graph keys (rows, context bucket) and eligibility on the host (run
// everywhere), and on a GPU the graph cache (capture, replay, eviction, a failed capture) and
// CUDA stages with graphs on against the same stages with graphs off (1, 2 and 4 stages).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda/cuda_stage.hpp"
#include "backend/cuda/decode_graphs.hpp"
#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/safetensors.hpp"
#include "gpu/gpu_test_util.hpp"
#include "model/make_model.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

using cuda::decode_graph_key;
using cuda::DecodeGraphKey;
using gpu_testing::no_device_reason;

// ---- without a device: keys and eligibility ---------------------------------------------------

// One single-token chunk per position (sequence slots 0, 1, ...).
MicroBatch decode_batch(const std::vector<int64_t>& positions) {
  MicroBatch mb;
  for (size_t i = 0; i < positions.size(); ++i) {
    mb.chunks.push_back(SeqChunk{.seq = static_cast<int32_t>(i),
                                 .begin = positions[i],
                                 .end = positions[i] + 1,
                                 .sample = true});
  }
  return mb;
}

int64_t bucket_at(int64_t position, int64_t max_context) {
  const auto key = decode_graph_key(decode_batch({position}), 8, max_context);
  EXPECT_TRUE(key.has_value()) << "position " << position;
  return key ? key->max_keys : -1;
}

TEST(DecodeGraphKey, BucketsArePowersOfTwoFrom256) {
  EXPECT_EQ(bucket_at(0, 4096), 256);
  EXPECT_EQ(bucket_at(255, 4096), 256);  // 256 keys
  EXPECT_EQ(bucket_at(256, 4096), 512);  // 257 keys
  EXPECT_EQ(bucket_at(511, 4096), 512);  // 512 keys
  EXPECT_EQ(bucket_at(1000, 4096), 1024);
  EXPECT_EQ(bucket_at(4095, 4096), 4096);
}

TEST(DecodeGraphKey, BucketsAreCappedAtTheContext) {
  EXPECT_EQ(bucket_at(1000, 1001), 1001);
  EXPECT_EQ(bucket_at(1000, 1500), 1024);
  EXPECT_EQ(bucket_at(0, 100), 100);
  EXPECT_EQ(bucket_at(99, 100), 100);
  EXPECT_EQ(cuda::decode_keys_bucket(3, 1), 1);
}

TEST(DecodeGraphKey, KeyIsRowsAndTheBucketOfTheLongestRow) {
  const auto key = decode_graph_key(decode_batch({3, 300, 17}), 8, 4096);
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(*key, (DecodeGraphKey{.rows = 3, .max_keys = 512}));
  // Same rows, other lengths in the same bucket: the same graph.
  EXPECT_EQ(decode_graph_key(decode_batch({400, 2, 500}), 8, 4096), key);
  EXPECT_NE(decode_graph_key(decode_batch({400, 2}), 8, 4096), key);
}

TEST(DecodeGraphKey, PrefillAndMixedMicroBatchesAreNotEligible) {
  MicroBatch prefill;
  prefill.chunks = {SeqChunk{.seq = 0, .begin = 0, .end = 2, .sample = true}};
  EXPECT_FALSE(decode_graph_key(prefill, 8, 4096).has_value());
  MicroBatch mixed = decode_batch({5, 9});
  mixed.chunks.push_back(SeqChunk{.seq = 2, .begin = 0, .end = 7, .sample = true});
  EXPECT_FALSE(decode_graph_key(mixed, 8, 4096).has_value());
  EXPECT_FALSE(decode_graph_key(MicroBatch{}, 8, 4096).has_value());
}

TEST(DecodeGraphKey, TooManyRowsOrGraphsOffAreNotEligible) {
  const MicroBatch three = decode_batch({1, 2, 3});
  EXPECT_TRUE(decode_graph_key(three, 3, 4096).has_value());
  EXPECT_FALSE(decode_graph_key(three, 2, 4096).has_value());
  EXPECT_FALSE(decode_graph_key(three, 0, 4096).has_value());  // graphs off
  // Past the KV capacity the stage refuses the micro-batch; there is no key for it.
  EXPECT_FALSE(decode_graph_key(decode_batch({100}), 8, 100).has_value());
}

TEST(DecodeGraphKey, MaxRowsFollowsTheSlotsAndTheMicroBatch) {
  EXPECT_EQ(cuda::decode_graph_max_rows(4096, 8), 8);
  EXPECT_EQ(cuda::decode_graph_max_rows(4096, 1000), cuda::kMaxDecodeGraphRows);
  EXPECT_EQ(cuda::decode_graph_max_rows(16, 64), 16);
}

TEST(DecodeGraphStats, RefusesAStageOfAnotherBackend) {
  class NotCuda final : public StageBackend {
   public:
    std::string describe() const override { return "not a CUDA stage"; }
    void compute(const MicroBatch&, const StepContext&, Activations&) override {}
    void sample(const MicroBatch&, const StepContext&, const Activations&,
                std::vector<SampledToken>&, std::vector<LogitsRow>&) override {}
    void commit(int64_t, std::span<const int32_t>) override {}
    void rollback(std::span<const int32_t>) override {}
    void truncate(int32_t, int64_t) override {}
    int64_t committed(int32_t) const override { return 0; }
  };
  test::expect_invalid([] { cuda::decode_graph_stats(NotCuda{}); },
                       {"CUDA stages", "not a CUDA stage"});
}

// ---- on a device: the cache -------------------------------------------------------------------

class DecodeGraphCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string reason = no_device_reason(); !reason.empty()) GTEST_SKIP() << reason;
    gpu_testing::cuda_ok(cudaSetDevice(0), "cudaSetDevice");
    gpu_testing::cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                         "cudaStreamCreate");
    buffer_ = std::make_unique<gpu_testing::DeviceBuffer<uint8_t>>(4096);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Launches `key`; a capture records "fill the buffer with `value`".
  void launch(cuda::DecodeGraphCache& cache, int64_t rows, int value) {
    cache.launch({.rows = rows, .max_keys = 256}, stream_, [&] {
      gpu_testing::cuda_ok(cudaMemsetAsync(buffer_->get(), value, buffer_->size(), stream_),
                           "cudaMemsetAsync");
    });
  }
  // What the last launch wrote (the buffer is cleared afterwards).
  int written() {
    gpu_testing::cuda_ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    const std::vector<uint8_t> bytes = buffer_->download();
    // Cleared on the graphs' stream: a plain upload on the legacy stream would not be ordered
    // before the next replay on this non-blocking one.
    gpu_testing::cuda_ok(cudaMemsetAsync(buffer_->get(), 0, buffer_->size(), stream_),
                         "cudaMemsetAsync");
    gpu_testing::cuda_ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    EXPECT_TRUE(std::all_of(bytes.begin(), bytes.end(), [&](uint8_t b) { return b == bytes[0]; }));
    return bytes.front();
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<gpu_testing::DeviceBuffer<uint8_t>> buffer_;  // [4096] bytes
};

TEST_F(DecodeGraphCacheTest, CapturesOnceReplaysAfterwards) {
  cuda::DecodeGraphCache cache(0);
  launch(cache, 1, 7);
  EXPECT_EQ(written(), 7);  // the launch after the capture runs the graph
  launch(cache, 1, 9);      // replay: the graph recorded 7, `record` is not called
  EXPECT_EQ(written(), 7);
  launch(cache, 2, 11);
  EXPECT_EQ(written(), 11);
  EXPECT_EQ(cache.captures(), 2);
  EXPECT_EQ(cache.replays(), 1);
  EXPECT_EQ(cache.size(), 2u);
}

TEST_F(DecodeGraphCacheTest, EvictsTheLeastRecentlyUsed) {
  cuda::DecodeGraphCache cache(0, 2);
  launch(cache, 1, 1);
  launch(cache, 2, 2);
  launch(cache, 1, 1);  // 2 is now the least recently used
  launch(cache, 3, 3);  // evicts 2
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.captures(), 3);
  launch(cache, 1, 1);  // still cached
  EXPECT_EQ(cache.captures(), 3);
  launch(cache, 2, 4);  // captured again, with what it records now
  EXPECT_EQ(written(), 4);
  EXPECT_EQ(cache.captures(), 4);
  EXPECT_EQ(cache.replays(), 2);
}

TEST_F(DecodeGraphCacheTest, AFailedCaptureLeavesTheStreamUsable) {
  cuda::DecodeGraphCache cache(0);
  EXPECT_THROW(cache.launch({.rows = 1, .max_keys = 256}, stream_,
                            [] { throw std::runtime_error("recording failed"); }),
               std::runtime_error);
  // A call a capture forbids (synchronizing the capturing stream) fails the capture.
  EXPECT_ANY_THROW(cache.launch({.rows = 2, .max_keys = 256}, stream_, [&] {
    gpu_testing::cuda_ok(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }));
  EXPECT_EQ(cache.captures(), 0);
  EXPECT_EQ(cache.size(), 0u);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusActive;
  gpu_testing::cuda_ok(cudaStreamIsCapturing(stream_, &status), "cudaStreamIsCapturing");
  EXPECT_EQ(status, cudaStreamCaptureStatusNone);
  launch(cache, 1, 5);
  EXPECT_EQ(written(), 5);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// ---- on a device: stages with graphs against stages without ---------------------------------

ModelConfig graph_config() {
  ModelConfig config = preset_config("tiny");  // 4 layers, max_position_embeddings 1024
  config.hidden_size = 256;
  config.intermediate_size = 512;
  config.n_heads = 4;
  config.n_kv_heads = 2;
  config.head_dim = 64;
  return config;
}

// The sequences of a step's micro-batches.
using StepShape = std::vector<std::vector<int32_t>>;

struct RunResult {
  std::vector<std::vector<int32_t>> tokens;                // by sequence: prompt + generated
  std::vector<std::vector<float>> logits;                  // by step: the sampled rows, in order
  std::vector<std::vector<cuda::DecodeGraphStats>> stats;  // by step, by stage
};

class CudaGraphStageTest : public ::testing::Test {
 protected:
  static constexpr int64_t kMaxContext = 1024;
  static constexpr int32_t kMaxSeqs = 4;

  void SetUp() override {
    if (const std::string reason = no_device_reason(); !reason.empty()) GTEST_SKIP() << reason;
    dir_ = std::make_unique<test::TempDir>("conveyor-cuda-graphs");
    MakeModelOptions options;
    options.config = graph_config();
    options.seed = 13;
    options.out_dir = dir_->path();
    make_model(options);
  }

  // `n_stages` stages over the model's layers (first embeds, last has the head), on device 0.
  std::vector<std::unique_ptr<StageBackend>> stages(int n_stages, bool graphs, DType dtype) const {
    const ModelConfig config = graph_config();
    const SafeTensors tensors = SafeTensors::open(dir_->path());
    std::vector<std::unique_ptr<StageBackend>> out;
    for (int s = 0; s < n_stages; ++s) {
      const StageWeightsSpec spec{.first_layer = config.n_layers * s / n_stages,
                                  .last_layer = config.n_layers * (s + 1) / n_stages,
                                  .embedding = s == 0,
                                  .head = s == n_stages - 1};
      out.push_back(cuda::make_cuda_stage(config, load_stage_weights(tensors, config, spec),
                                          cuda::CudaStageOptions{.device = 0,
                                                                 .dtype = dtype,
                                                                 .max_seqs = kMaxSeqs,
                                                                 .max_context = kMaxContext,
                                                                 .cuda_graphs = graphs}));
    }
    return out;
  }

  // Prefills `prompts` in one micro-batch (step 0, eager), then runs `decode` steps: each
  // micro-batch holds one token per listed sequence, passed stage to stage and sampled greedily.
  static RunResult run(std::vector<std::unique_ptr<StageBackend>>& stages,
                       const std::vector<std::vector<int32_t>>& prompts,
                       const std::vector<StepShape>& decode) {
    RunResult result;
    result.tokens = prompts;
    const std::vector<SamplingParams> sampling(static_cast<size_t>(kMaxSeqs));
    std::vector<MicroBatch> prefill(1);
    for (size_t s = 0; s < prompts.size(); ++s) {
      prefill[0].chunks.push_back(SeqChunk{.seq = static_cast<int32_t>(s),
                                           .begin = 0,
                                           .end = static_cast<int64_t>(prompts[s].size()),
                                           .sample = true});
    }
    std::vector<std::vector<MicroBatch>> steps = {prefill};
    for (const StepShape& shape : decode) {
      std::vector<MicroBatch> mbs;
      for (const std::vector<int32_t>& seqs : shape) {
        MicroBatch mb;
        mb.id = static_cast<int32_t>(mbs.size());
        for (int32_t seq : seqs) {
          // Filled in when the step runs: the position of the sequence's newest token.
          mb.chunks.push_back(SeqChunk{.seq = seq, .sample = true});
        }
        mbs.push_back(mb);
      }
      steps.push_back(mbs);
    }

    for (size_t step = 0; step < steps.size(); ++step) {
      std::vector<SampledToken> sampled;
      std::vector<LogitsRow> logits;
      const std::vector<LogitsCapture> capture(sampling.size(), LogitsCapture::kSampled);
      const StepContext ctx{.tokens = result.tokens, .sampling = sampling, .logits = capture};
      for (MicroBatch& mb : steps[step]) {
        mb.step = static_cast<int64_t>(step);
        if (step > 0) {
          for (SeqChunk& chunk : mb.chunks) {
            chunk.end = static_cast<int64_t>(result.tokens[static_cast<size_t>(chunk.seq)].size());
            chunk.begin = chunk.end - 1;
          }
        }
        Activations activations;
        for (auto& stage : stages)
          stage->compute(mb, ctx, activations);
        stages.back()->sample(mb, ctx, activations, sampled, logits);
      }
      std::vector<int32_t> slots(sampling.size());
      std::iota(slots.begin(), slots.end(), 0);
      for (auto& stage : stages)
        stage->commit(static_cast<int64_t>(step), slots);
      std::vector<float> step_logits;
      for (const LogitsRow& row : logits)
        step_logits.insert(step_logits.end(), row.values.begin(), row.values.end());
      result.logits.push_back(std::move(step_logits));
      for (const SampledToken& token : sampled)
        result.tokens[static_cast<size_t>(token.seq)].push_back(token.token);
      std::vector<cuda::DecodeGraphStats> stats;
      for (const auto& stage : stages)
        stats.push_back(cuda::decode_graph_stats(*stage));
      result.stats.push_back(stats);
    }
    return result;
  }

  // Prompts of 250, 7 and 100 tokens: sequence 0 crosses from the 256-key bucket to the 512 one
  // after six decode steps.
  static std::vector<std::vector<int32_t>> prompts() {
    std::mt19937 rng(29);
    std::uniform_int_distribution<int32_t> id(0,
                                              static_cast<int32_t>(graph_config().vocab_size) - 1);
    std::vector<std::vector<int32_t>> out;
    for (int length : {250, 7, 100}) {
      std::vector<int32_t> prompt;
      for (int i = 0; i < length; ++i)
        prompt.push_back(id(rng));
      out.push_back(prompt);
    }
    return out;
  }

  static void expect_same(const RunResult& graphs, const RunResult& eager,
                          const std::string& what) {
    EXPECT_EQ(graphs.tokens, eager.tokens) << what;
    ASSERT_EQ(graphs.logits.size(), eager.logits.size()) << what;
    for (size_t step = 0; step < eager.logits.size(); ++step) {
      // The same kernels on the same inputs; only decode attention's grid is larger (its extra
      // splits exit at once), so anything but rounding-level noise is a bug.
      EXPECT_LE(test::relative_error(graphs.logits[step], eager.logits[step]), 1e-5)
          << what << " step " << step;
    }
  }

  std::unique_ptr<test::TempDir> dir_;
};

TEST_F(CudaGraphStageTest, GraphsMatchEagerAndAreReused) {
  // 10 steps of all three sequences (keys (3, 256) x 6, then (3, 512) x 4), then 3 steps of
  // sequences 1 and 2 (key (2, 256)).
  std::vector<StepShape> decode(10, StepShape{{0, 1, 2}});
  decode.insert(decode.end(), 3, StepShape{{1, 2}});
  for (DType dtype : gpu_testing::kHalfTypes) {
    auto eager_stages = stages(1, false, dtype);
    auto graph_stages = stages(1, true, dtype);
    EXPECT_NE(graph_stages[0]->describe().find("decode graphs on"), std::string::npos)
        << graph_stages[0]->describe();
    EXPECT_NE(eager_stages[0]->describe().find("decode graphs off"), std::string::npos)
        << eager_stages[0]->describe();
    const RunResult eager = run(eager_stages, prompts(), decode);
    const RunResult graphs = run(graph_stages, prompts(), decode);
    expect_same(graphs, eager, gpu_testing::name(dtype));

    EXPECT_EQ(eager.stats.back()[0].captures, 0);
    EXPECT_EQ(eager.stats.back()[0].replays, 0);
    // By step (0 is the prefill, which never uses a graph): {captures, replays}.
    auto expect_counts = [&](size_t step, int64_t captures, int64_t replays) {
      EXPECT_EQ(graphs.stats[step][0].captures, captures) << "step " << step;
      EXPECT_EQ(graphs.stats[step][0].replays, replays) << "step " << step;
    };
    expect_counts(0, 0, 0);
    expect_counts(1, 1, 0);
    expect_counts(2, 1, 1);
    expect_counts(6, 1, 5);  // position 255: still 256 keys
    expect_counts(7, 2, 5);  // position 256: 257 keys, the 512 bucket
    expect_counts(10, 2, 8);
    expect_counts(11, 3, 8);  // two rows
    expect_counts(13, 3, 10);
    EXPECT_EQ(graphs.stats.back()[0].cached, 3);
  }
}

TEST_F(CudaGraphStageTest, SeveralMicroBatchesPerStep) {
  // Micro-batches of one and two rows in each step, then one of three rows.
  std::vector<StepShape> decode(8, StepShape{{0}, {1, 2}});
  decode.insert(decode.end(), 2, StepShape{{2, 0, 1}});
  auto eager_stages = stages(1, false, DType::kBF16);
  auto graph_stages = stages(1, true, DType::kBF16);
  const RunResult eager = run(eager_stages, prompts(), decode);
  const RunResult graphs = run(graph_stages, prompts(), decode);
  expect_same(graphs, eager, "bf16");
  // Keys: (1, 256), (2, 256), (1, 512) from step 7 on, (3, 512).
  EXPECT_EQ(graphs.stats.back()[0].captures, 4);
  EXPECT_EQ(graphs.stats.back()[0].replays, 2 * 8 + 2 - 4);
}

TEST_F(CudaGraphStageTest, PipelinesOfTwoAndFourStagesMatchEager) {
  std::vector<StepShape> decode(9, StepShape{{0, 1}, {2}});
  for (int n_stages : {2, 4}) {
    auto eager_stages = stages(n_stages, false, DType::kBF16);
    auto graph_stages = stages(n_stages, true, DType::kBF16);
    const RunResult eager = run(eager_stages, prompts(), decode);
    const RunResult graphs = run(graph_stages, prompts(), decode);
    expect_same(graphs, eager, fmt::format("S={}", n_stages));
    // Every stage sees the same micro-batches, so the same keys: (2, 256), (1, 256), (2, 512).
    for (int s = 0; s < n_stages; ++s) {
      const cuda::DecodeGraphStats& stats = graphs.stats.back()[static_cast<size_t>(s)];
      EXPECT_EQ(stats.captures, 3) << "S=" << n_stages << " stage " << s;
      EXPECT_EQ(stats.replays, 2 * 9 - 3) << "S=" << n_stages << " stage " << s;
    }
  }
}

TEST_F(CudaGraphStageTest, EngineWithGraphsMatchesEngineWithout) {
  std::vector<Request> requests = test::mixed_requests(8);
  // A long prompt, so decode crosses the 256-key bucket.
  Request long_request{.prompt = prompts()[0], .max_new_tokens = 10};
  long_request.stop_at_eos = false;
  requests.push_back(long_request);
  GenerateOptions generate;
  generate.return_logits = true;
  generate.all_logits = true;
  for (int n_stages : {1, 2, 4}) {
    EngineOptions options;
    options.device.backend = BackendKind::kCuda;
    options.n_stages = n_stages;
    options.device.cuda_devices = std::vector<int>(static_cast<size_t>(n_stages), 0);
    options.device.cuda_graphs = false;
    Engine eager_engine = Engine::open(dir_->path(), options);
    options.device.cuda_graphs = true;
    Engine graph_engine = Engine::open(dir_->path(), options);
    const GenerateResult eager = eager_engine.generate(requests, generate);
    const GenerateResult graphs = graph_engine.generate(requests, generate);
    // Twice: the second call replays graphs captured by the first.
    const GenerateResult again = graph_engine.generate(requests, generate);
    ASSERT_EQ(graphs.requests.size(), eager.requests.size());
    for (size_t r = 0; r < eager.requests.size(); ++r) {
      const std::string what = fmt::format("S={} request {}", n_stages, r);
      EXPECT_EQ(graphs.requests[r].tokens, eager.requests[r].tokens) << what;
      EXPECT_EQ(again.requests[r].tokens, eager.requests[r].tokens) << what;
      EXPECT_LE(test::relative_error(graphs.requests[r].logits, eager.requests[r].logits), 1e-5)
          << what;
      EXPECT_LE(test::relative_error(again.requests[r].logits, eager.requests[r].logits), 1e-5)
          << what;
    }
  }
}

}  // namespace
}  // namespace conveyor
