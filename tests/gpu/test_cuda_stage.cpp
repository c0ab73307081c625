// CudaStage: option and input checks (run everywhere), and on a GPU the whole engine against the
// CPU engine (1-4 stages on one device, micro-batched and chunked prefill, four model shapes),
// fault injection at every instruction, and refusals (unknown device, too little memory, F32).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "backend/cuda/cuda_stage.hpp"
#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"
#include "conveyor/safetensors.hpp"
#include "gpu/gpu_test_util.hpp"
#include "model/make_model.hpp"
#include "model/weights.hpp"

namespace conveyor {
namespace {

using gpu_testing::no_device_reason;

// ---- without a device ------------------------------------------------------------------------

ModelConfig config_with_head_dim(int64_t head_dim) {
  ModelConfig config = preset_config("tiny");
  config.hidden_size = 256;
  config.intermediate_size = 512;
  config.n_heads = 4;
  config.n_kv_heads = 2;
  config.head_dim = head_dim;
  return config;
}

cuda::CudaStageOptions valid_options() {
  return cuda::CudaStageOptions{
      .device = 0, .dtype = DType::kBF16, .max_seqs = 2, .max_context = 64};
}

TEST(CudaStageOptions, ValidOptionsPass) {
  EXPECT_NO_THROW(valid_options().validate());
}

TEST(CudaStageOptions, RefusesBadValues) {
  auto with = [](const std::function<void(cuda::CudaStageOptions&)>& change) {
    cuda::CudaStageOptions options = valid_options();
    change(options);
    return options;
  };
  test::expect_invalid([&] { with([](auto& o) { o.dtype = DType::kF32; }).validate(); },
                       {"F32", "bf16 or f16", "cpu backend"});
  test::expect_invalid([&] { with([](auto& o) { o.device = -1; }).validate(); }, {"-1"});
  test::expect_invalid([&] { with([](auto& o) { o.max_seqs = 0; }).validate(); },
                       {"max_seqs is 0"});
  test::expect_invalid([&] { with([](auto& o) { o.max_context = 0; }).validate(); },
                       {"max_context is 0"});
  test::expect_invalid([&] { with([](auto& o) { o.max_tokens_per_micro_batch = 0; }).validate(); },
                       {"max_tokens_per_micro_batch is 0"});
  test::expect_invalid(
      [&] { with([](auto& o) { o.max_tokens_per_micro_batch = 70000; }).validate(); },
      {"70000", "65535", "chunk_tokens"});
}

TEST(CudaStage, RefusesHeadDimTheKernelsLack) {
  // Checked before the device, so this runs everywhere.
  test::expect_invalid(
      [] { cuda::make_cuda_stage(config_with_head_dim(32), StageWeights{}, valid_options()); },
      {"head_dim is 32", "64 and 128", "cpu backend"});
}

TEST(CudaStage, RefusesF32BeforeTouchingTheDevice) {
  cuda::CudaStageOptions options = valid_options();
  options.dtype = DType::kF32;
  test::expect_invalid(
      [&] { cuda::make_cuda_stage(config_with_head_dim(64), StageWeights{}, options); }, {"F32"});
}

TEST(CudaStage, DeviceCountMatchesTheRuntime) {
  const int count = cuda::device_count();
  EXPECT_GE(count, 0);
  EXPECT_EQ(count == 0, !no_device_reason().empty());
}

TEST(CudaStage, NoDeviceIsAClearError) {
  if (no_device_reason().empty()) GTEST_SKIP() << "a CUDA device is present";
  test::expect_error(
      [] { cuda::make_cuda_stage(config_with_head_dim(64), StageWeights{}, valid_options()); },
      ErrorCode::kDevice, {"no CUDA device", "cpu backend"});
}

TEST(CudaStage, EngineWithoutDeviceRefusesTheCudaBackend) {
  if (no_device_reason().empty()) GTEST_SKIP() << "a CUDA device is present";
  test::TempDir dir("conveyor-cuda-nodev");
  test::make_tiny_model(dir.path(), 2);
  EngineOptions options;
  options.device.backend = BackendKind::kCuda;
  test::expect_error([&] { Engine::open(dir.path(), options); }, ErrorCode::kDevice,
                     {"no CUDA device"});
}

// ---- on a device: the engine against the CPU engine -------------------------------------------

struct Variant {
  std::string name;
  ModelConfig config;
};

// Tiny shapes the CUDA kernels take (head_dim 64/128), covering GQA ratios 1, 2, 4 and 8,
// attention bias (Qwen2), tied embeddings and llama3 RoPE scaling.
std::vector<Variant> variants() {
  std::vector<Variant> out;
  ModelConfig llama = config_with_head_dim(64);
  out.push_back({"llama_gqa2", llama});

  ModelConfig qwen2 = config_with_head_dim(64);
  apply_overrides(qwen2, ConfigOverrides{.architecture = Architecture::kQwen2});
  qwen2.n_kv_heads = 4;
  out.push_back({"qwen2_bias_gqa1", qwen2});

  ModelConfig tied = config_with_head_dim(128);
  apply_overrides(tied, ConfigOverrides{.tie_word_embeddings = true,
                                        .rope_scaling = parse_rope_scaling_flag("llama3")});
  tied.n_kv_heads = 1;
  out.push_back({"tied_llama3_gqa4_d128", tied});

  ModelConfig gqa8 = config_with_head_dim(64);
  gqa8.n_heads = 8;
  gqa8.n_kv_heads = 1;
  out.push_back({"llama_gqa8", gqa8});
  return out;
}

std::vector<Request> greedy_requests() {
  return test::mixed_requests();
}

GenerateOptions all_logits() {
  GenerateOptions options;
  options.return_logits = true;
  options.all_logits = true;
  return options;
}

// Top-1 minus top-2 logit of a row: below 0.05 the greedy choice is a coin toss for 16-bit math.
double top_margin(const float* row, int64_t vocab) {
  float first = -INFINITY, second = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) {
    if (row[i] > first) {
      second = first;
      first = row[i];
    } else if (row[i] > second) {
      second = row[i];
    }
  }
  return static_cast<double>(first) - static_cast<double>(second);
}

// Rows of all_logits: one per prompt position, then one per generated token after the first.
// Row j >= prompt - 1 is the row token k = j - (prompt - 1) was sampled from. A row is compared
// while both runs saw the same tokens; greedy tokens must agree wherever the CPU's margin is
// clear.
void expect_close_to_cpu(const GenerateResult& gpu, const GenerateResult& cpu,
                         const std::vector<Request>& requests, int64_t vocab, double tolerance,
                         const std::string& what) {
  ASSERT_EQ(gpu.requests.size(), cpu.requests.size()) << what;
  for (size_t r = 0; r < cpu.requests.size(); ++r) {
    const RequestResult& g = gpu.requests[r];
    const RequestResult& c = cpu.requests[r];
    ASSERT_EQ(g.logits_rows, c.logits_rows) << what << " request " << r;
    ASSERT_EQ(g.tokens.size(), c.tokens.size()) << what << " request " << r;
    const auto prompt = static_cast<int64_t>(requests[r].prompt.size());
    for (int64_t j = 0; j < c.logits_rows; ++j) {
      const int64_t k = j - (prompt - 1);  // token sampled from row j (when >= 0)
      const float* g_row = g.logits.data() + j * vocab;
      const float* c_row = c.logits.data() + j * vocab;
      const double error = test::relative_error(std::span<const float>(g_row, vocab),
                                                std::span<const float>(c_row, vocab));
      EXPECT_LE(error, tolerance) << what << " request " << r << " row " << j;
      if (k < 0) continue;
      const auto token = static_cast<size_t>(k);
      if (g.tokens[token] != c.tokens[token]) {
        EXPECT_LT(top_margin(c_row, vocab), 0.05)
            << what << " request " << r << ": token " << k << " is " << g.tokens[token]
            << " on the GPU but " << c.tokens[token] << " on the CPU with a clear margin";
        break;  // later rows have different contexts
      }
    }
  }
}

class CudaEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string reason = no_device_reason(); !reason.empty()) GTEST_SKIP() << reason;
  }

  static void make(const Variant& variant, const test::TempDir& dir) {
    MakeModelOptions options;
    options.config = variant.config;
    options.seed = 11;
    options.out_dir = dir.path();
    make_model(options);
  }

  static EngineOptions cuda_options(int stages, DType dtype) {
    EngineOptions options;
    options.device.backend = BackendKind::kCuda;
    options.n_stages = stages;
    options.device.cuda_devices = std::vector<int>(static_cast<size_t>(stages), 0);
    options.device.dtype = dtype;
    return options;
  }
};

TEST_F(CudaEngineTest, MatchesTheCpuEngine) {
  const std::vector<Request> requests = greedy_requests();
  for (const Variant& variant : variants()) {
    test::TempDir dir("conveyor-cuda-engine");
    make(variant, dir);
    Engine cpu_engine = Engine::open(dir.path(), EngineOptions{});
    const GenerateResult cpu = cpu_engine.generate(requests, all_logits());
    for (DType dtype : {DType::kBF16, DType::kF16}) {
      for (int stages = 1; stages <= 4; ++stages) {
        for (int64_t chunk : {int64_t{0}, int64_t{4}}) {
          EngineOptions options = cuda_options(stages, dtype);
          options.schedule.chunking = chunk > 0 ? Chunking::fixed(chunk) : Chunking::never();
          options.schedule.prefill_micro_batches = stages + 1;
          Engine engine = Engine::open(dir.path(), options);
          const std::string what = fmt::format("{} {} S={} chunk={}", variant.name,
                                               gpu_testing::name(dtype), stages, chunk);
          expect_close_to_cpu(engine.generate(requests, all_logits()), cpu, requests,
                              variant.config.vocab_size, 2e-2, what);
        }
      }
    }
  }
}

TEST_F(CudaEngineTest, SampledRequestsAreReproducible) {
  test::TempDir dir("conveyor-cuda-sampled");
  make(variants().front(), dir);
  std::vector<Request> requests = greedy_requests();
  requests[1].sampling = {.temperature = 0.9, .top_k = 40, .top_p = 0.9, .seed = 3};
  requests[2].sampling = {.temperature = 1.3, .top_k = 0, .top_p = 1.0, .seed = 8};
  Engine engine = Engine::open(dir.path(), cuda_options(3, DType::kBF16));
  // Same engine, same plans: the same logits bits and draws keyed by (seed, position), so the
  // second call (slots released and reused) repeats the first exactly.
  const GenerateResult a = engine.generate(requests);
  const GenerateResult b = engine.generate(requests);
  ASSERT_EQ(a.requests.size(), b.requests.size());
  for (size_t r = 0; r < a.requests.size(); ++r) {
    EXPECT_EQ(a.requests[r].tokens.size(), 6u);
    EXPECT_EQ(a.requests[r].tokens, b.requests[r].tokens) << "request " << r;
    for (int32_t token : a.requests[r].tokens) {
      EXPECT_GE(token, 0);
      EXPECT_LT(token, variants().front().config.vocab_size);
    }
  }
}

TEST_F(CudaEngineTest, FaultInjectionAtEveryInstructionLeavesTheEngineUsable) {
  test::TempDir dir("conveyor-cuda-fault");
  make(variants().front(), dir);
  const std::vector<Request> requests = greedy_requests();
  EngineOptions clean_options = cuda_options(3, DType::kBF16);
  clean_options.schedule.prefill_micro_batches = 2;
  clean_options.schedule.decode_micro_batches = 2;
  Engine clean_engine = Engine::open(dir.path(), clean_options);
  const GenerateResult clean = clean_engine.generate(requests, all_logits());
  // Programs of stage s have 2M+1 (s = 0) or 3M+1 instructions; M = 2 in prefill and decode.
  // The last, Commit, only marks the stage done; the fault doubles throw at the others.
  for (int64_t step : {int64_t{0}, int64_t{2}}) {
    for (int stage = 0; stage < 3; ++stage) {
      const int n_instructions = stage == 0 ? 5 : 7;
      for (int instruction = 0; instruction + 1 < n_instructions; ++instruction) {
        auto faults =
            test::FaultInjector::create({.stage = stage, .step = step, .instruction = instruction});
        Engine engine = faults->hooks().open(dir.path(), clean_options);
        std::string message = "<no error>";
        try {
          engine.generate(requests, all_logits());
        } catch (const Error& e) {
          message = e.what();
        }
        EXPECT_NE(
            message.find(fmt::format("stage {} failed at instruction {} (", stage, instruction)),
            std::string::npos)
            << message;
        EXPECT_NE(message.find("injected fault"), std::string::npos) << message;
        // Later steps have other numbers, so the fault does not fire again.
        const GenerateResult again = engine.generate(requests, all_logits());
        ASSERT_EQ(again.requests.size(), clean.requests.size());
        for (size_t r = 0; r < clean.requests.size(); ++r) {
          EXPECT_EQ(again.requests[r].tokens, clean.requests[r].tokens) << message;
          EXPECT_LE(test::relative_error(again.requests[r].logits, clean.requests[r].logits), 1e-3)
              << message;
        }
      }
    }
  }
}

// ---- on a device: refusals -------------------------------------------------------------------

class CudaStageRefusalTest : public CudaEngineTest {
 protected:
  void SetUp() override {
    CudaEngineTest::SetUp();
    if (IsSkipped()) return;
    dir_ = std::make_unique<test::TempDir>("conveyor-cuda-refuse");
    make(variants().front(), *dir_);
  }

  StageWeights weights() const {
    const SafeTensors tensors = SafeTensors::open(dir_->path());
    const ModelConfig& config = variants().front().config;
    return load_stage_weights(
        tensors, config,
        StageWeightsSpec{
            .first_layer = 0, .last_layer = config.n_layers, .embedding = true, .head = true});
  }

  std::unique_ptr<test::TempDir> dir_;
};

TEST_F(CudaStageRefusalTest, UnknownDevice) {
  const int count = cuda::device_count();
  cuda::CudaStageOptions options = valid_options();
  options.device = count;
  test::expect_invalid(
      [&] { cuda::make_cuda_stage(variants().front().config, weights(), options); },
      {fmt::format("CUDA device {} does not exist", count)});
  EngineOptions engine_options = cuda_options(2, DType::kBF16);
  engine_options.device.cuda_devices = {0, count};
  test::expect_invalid([&] { Engine::open(dir_->path(), engine_options); },
                       {std::to_string(count)});
}

TEST_F(CudaStageRefusalTest, NotEnoughMemory) {
  cuda::CudaStageOptions options = valid_options();
  options.max_seqs = 64;
  options.max_context = int64_t{1} << 30;
  test::expect_error([&] { cuda::make_cuda_stage(variants().front().config, weights(), options); },
                     ErrorCode::kOutOfMemory,
                     {"KV cache", "free", "--max-context", "fewer layers"});
}

TEST_F(CudaStageRefusalTest, F32DeviceDtype) {
  EngineOptions options = cuda_options(1, DType::kF32);
  try {
    Engine::open(dir_->path(), options);
    ADD_FAILURE() << "an F32 CUDA engine opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
}

TEST_F(CudaStageRefusalTest, MicroBatchLargerThanPlanned) {
  cuda::CudaStageOptions options = valid_options();
  options.max_tokens_per_micro_batch = 8;
  std::unique_ptr<StageBackend> stage =
      cuda::make_cuda_stage(variants().front().config, weights(), options);
  EXPECT_NE(stage->describe().find("cuda:0"), std::string::npos) << stage->describe();
  const std::vector<std::vector<int32_t>> tokens = {std::vector<int32_t>(9, 7)};
  const std::vector<SamplingParams> sampling(1);
  const StepContext ctx{.tokens = tokens, .sampling = sampling};
  MicroBatch mb;
  mb.chunks = {SeqChunk{.seq = 0, .begin = 0, .end = 9, .sample = true}};
  Activations activations;
  test::expect_invalid([&] { stage->compute(mb, ctx, activations); },
                       {"9 tokens", "max_tokens_per_micro_batch", "chunk_tokens"});
  EXPECT_EQ(stage->committed(0), 0);
}

// One stage driven by hand: prefill then decode, commit and rollback keep the ledger in step.
TEST_F(CudaStageRefusalTest, CommitAndRollbackLengths) {
  std::unique_ptr<StageBackend> stage =
      cuda::make_cuda_stage(variants().front().config, weights(), valid_options());
  const std::vector<std::vector<int32_t>> tokens = {{5, 6, 7, 8}, {9}};
  const std::vector<SamplingParams> sampling(2);
  const StepContext ctx{.tokens = tokens, .sampling = sampling};
  MicroBatch prefill;
  prefill.chunks = {SeqChunk{.seq = 0, .begin = 0, .end = 3, .sample = true}};
  Activations activations;
  stage->compute(prefill, ctx, activations);
  EXPECT_TRUE(activations.device != nullptr);
  EXPECT_TRUE(activations.host.empty());
  std::vector<SampledToken> sampled;
  std::vector<LogitsRow> logits;
  stage->sample(prefill, ctx, activations, sampled, logits);
  ASSERT_EQ(sampled.size(), 1u);
  EXPECT_EQ(sampled[0].position, 2);
  const std::vector<int32_t> seq0 = {0};
  stage->commit(0, seq0);
  EXPECT_EQ(stage->committed(0), 3);

  MicroBatch decode;
  decode.chunks = {SeqChunk{.seq = 0, .begin = 3, .end = 4, .sample = true}};
  Activations next;
  stage->compute(decode, ctx, next);
  stage->rollback(seq0);
  EXPECT_EQ(stage->committed(0), 3);
  // After the rollback the same positions can be written again.
  Activations retry;
  EXPECT_NO_THROW(stage->compute(decode, ctx, retry));
  stage->commit(1, seq0);
  EXPECT_EQ(stage->committed(0), 4);
}

TEST_F(CudaEngineTest, RandomWeightsMatchTheCpuEngine) {
  // Drawn on the device for CUDA, on the host for the CPU: the same values before rounding.
  test::TempDir dir("conveyor-cuda-random");
  const Variant& variant = variants().front();
  const std::filesystem::path config = dir.path() / "config.json";
  std::ofstream(config) << variant.config.to_json();
  const std::vector<Request> requests = greedy_requests();
  EngineOptions cpu_options;
  cpu_options.random_weights_seed = 77;
  const GenerateResult cpu = Engine::open(config, cpu_options).generate(requests, all_logits());
  for (int stages : {1, 3}) {
    EngineOptions options = cuda_options(stages, DType::kBF16);
    options.random_weights_seed = 77;
    Engine engine = Engine::open(config, options);
    expect_close_to_cpu(engine.generate(requests, all_logits()), cpu, requests,
                        variant.config.vocab_size, 2e-2,
                        fmt::format("random weights S={}", stages));
  }
}

}  // namespace
}  // namespace conveyor
