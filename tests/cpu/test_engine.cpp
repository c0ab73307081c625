// Engine on the CPU: S pipeline stages must reproduce the single-stage run exactly (tokens) and
// to 1e-5 (logits) for every partition, micro-batch count and chunking; bad input is refused
// with a clear error; an injected fault aborts the step and leaves the engine usable.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <functional>
#include <set>

#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"

namespace conveyor {
namespace {

constexpr int64_t kLayers = 6;

std::string fmt_what(int stages, int micro, int64_t chunk) {
  return fmt::format("S={} M={} chunk={}", stages, micro, chunk);
}
std::string fmt_where(int stage, int instruction) {
  return fmt::format("stage {} failed at instruction {} (", stage, instruction);
}

using test::error_of;

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("conveyor-engine");
    test::make_tiny_model(dir_->path(), kLayers, 21);
    // The reference: one stage, whole prompts.
    Engine engine = Engine::open(dir_->path(), {});
    reference_ = new GenerateResult(engine.generate(requests(), logits_options()));
  }
  static void TearDownTestSuite() {
    delete reference_;
    delete dir_;
  }

  // Mixed prompt lengths, and one sampled request to check sampling is pipeline-invariant.
  static std::vector<Request> requests() {
    std::vector<Request> reqs = test::mixed_requests();
    reqs[2].sampling = {.temperature = 0.9, .top_k = 40, .top_p = 0.9, .seed = 3};
    return reqs;
  }
  static GenerateOptions logits_options() { return {.return_logits = true, .all_logits = true}; }

  static void expect_matches_reference(const GenerateResult& got, const std::string& what) {
    ASSERT_EQ(got.requests.size(), reference_->requests.size()) << what;
    for (size_t r = 0; r < got.requests.size(); ++r) {
      const RequestResult& a = got.requests[r];
      const RequestResult& b = reference_->requests[r];
      EXPECT_EQ(a.tokens, b.tokens) << what << " request " << r;
      ASSERT_EQ(a.logits_rows, b.logits_rows) << what << " request " << r;
      EXPECT_LE(test::relative_error(a.logits, b.logits), 1e-5) << what << " request " << r;
    }
  }

  static test::TempDir* dir_;
  static GenerateResult* reference_;
};

test::TempDir* EngineTest::dir_ = nullptr;
GenerateResult* EngineTest::reference_ = nullptr;

TEST_F(EngineTest, ReferenceIsSane) {
  ASSERT_EQ(reference_->requests.size(), 3u);
  for (size_t r = 0; r < 3; ++r) {
    const auto& out = reference_->requests[r];
    EXPECT_EQ(out.tokens.size(), 6u);
    // all_logits: one row per prompt position, then one per decode step.
    EXPECT_EQ(out.logits_rows, static_cast<int64_t>(requests()[r].prompt.size()) + 5);
  }
  // A pipeline that ignored positions (broken RoPE/KV) would repeat one token forever.
  const auto& tokens = reference_->requests[1].tokens;
  EXPECT_GT(std::set<int32_t>(tokens.begin(), tokens.end()).size(), 1u);
  EXPECT_EQ(reference_->prefill_tokens, 5 + 17 + 9);
  EXPECT_EQ(reference_->decode_tokens, 3 * 5);
}

TEST_F(EngineTest, StagesTimesMicroBatchesTimesChunking) {
  for (int stages : {1, 2, 3, 4, 6}) {
    for (int micro : {1, 2, 4, 8}) {
      for (int64_t chunk : {int64_t{0}, int64_t{4}}) {
        EngineOptions options;
        options.n_stages = stages;
        options.schedule = {.prefill_micro_batches = micro,
                            .decode_micro_batches = std::min(micro, 3),
                            .chunking = chunk > 0 ? Chunking::fixed(chunk) : Chunking::never()};
        Engine engine = Engine::open(dir_->path(), options);
        expect_matches_reference(engine.generate(requests(), logits_options()),
                                 fmt_what(stages, micro, chunk));
      }
    }
  }
}

TEST_F(EngineTest, UnevenPartitionsAndThreads) {
  for (const std::vector<int64_t>& counts :
       {std::vector<int64_t>{1, 5}, {5, 1}, {4, 1, 1}, {1, 2, 3}, {2, 1, 1, 2}}) {
    EngineOptions options;
    options.partition = fmt::format("{}", fmt::join(counts, ","));  // implies the stage count
    options.device.threads_per_stage = 2;
    options.schedule = {.prefill_micro_batches = 3, .chunking = Chunking::fixed(3)};
    Engine engine = Engine::open(dir_->path(), options);
    EXPECT_EQ(engine.partition().counts(), counts);
    expect_matches_reference(engine.generate(requests(), logits_options()), "uneven partition");
  }
}

TEST_F(EngineTest, PartitionSpecs) {
  for (const char* spec : {"balanced", "2,2,2", "emb,0-0|1-4|5,head"}) {
    EngineOptions options{.n_stages = 3, .partition = spec};
    Engine engine = Engine::open(dir_->path(), options);
    EXPECT_EQ(engine.partition().n_stages(), 3) << spec;
    expect_matches_reference(engine.generate(requests(), logits_options()), spec);
  }
  EXPECT_EQ(Engine::open(dir_->path(), {.n_stages = 3, .partition = "emb,0-0|1-4|5,head"})
                .partition()
                .to_string(),
            "1,4,1");
  EXPECT_NE(error_of([&] {
              Engine::open(dir_->path(), {.n_stages = 2, .partition = "3,x"});
            }).find("'x'"),
            std::string::npos);
  // Counts and layouts imply the stage count; a different n_stages is a contradiction.
  EXPECT_EQ(Engine::open(dir_->path(), {.partition = "1,2,3"}).partition().n_stages(), 3);
  EXPECT_NE(error_of([&] {
              Engine::open(dir_->path(), {.n_stages = 2, .partition = "1,2,3"});
            }).find("has 3 stages but 2 were asked for"),
            std::string::npos);
  EXPECT_EQ(Engine::open(dir_->path(), {}).partition().n_stages(), 1);
}

TEST_F(EngineTest, OneLongPromptIsChunkedToFillThePipeline) {
  std::vector<Request> one = {requests()[1]};  // 17 tokens
  one[0].max_new_tokens = 3;
  Engine reference = Engine::open(dir_->path(), {});
  const GenerateResult expected = reference.generate(one, logits_options());
  // Default M = S = 3 micro-batches for one prompt: automatic 16-token chunks (2 rounds).
  Engine automatic = Engine::open(dir_->path(), {.n_stages = 3});
  const GenerateResult got = automatic.generate(one, logits_options());
  EXPECT_EQ(got.steps.front().n_micro_batches, 2);
  EXPECT_EQ(got.requests[0].tokens, expected.requests[0].tokens);
  EXPECT_LE(test::relative_error(got.requests[0].logits, expected.requests[0].logits), 1e-5);
  // "never" turns it off; a batch at least as large as M is never chunked automatically.
  Engine never =
      Engine::open(dir_->path(), {.n_stages = 3, .schedule = {.chunking = Chunking::never()}});
  EXPECT_EQ(never.generate(one).steps.front().n_micro_batches, 1);
  Engine batch = Engine::open(dir_->path(), {.n_stages = 3});
  EXPECT_EQ(batch.generate(requests()).steps.front().n_micro_batches, 3);
  EXPECT_NE(error_of([&] {
              Engine::open(dir_->path(), {.schedule = {.chunking = Chunking::fixed(0)}});
            }).find("fixed chunk size must be >= 1"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Chunking::parse("-1"); }).find("\"auto\", \"never\""),
            std::string::npos);
}

TEST_F(EngineTest, EngineIsReusableAcrossCalls) {
  Engine engine = Engine::open(dir_->path(), {.n_stages = 3});
  for (int i = 0; i < 3; ++i) {
    expect_matches_reference(engine.generate(requests(), logits_options()), "repeat");
  }
}

TEST_F(EngineTest, StreamingCallbackAndStopTokens) {
  Engine engine = Engine::open(dir_->path(), {.n_stages = 2});
  std::vector<Request> reqs = requests();
  // Stop request 0 at its third greedy token.
  const int32_t stop = reference_->requests[0].tokens[2];
  reqs[0].stop_token_ids = {stop};
  std::vector<TokenEvent> events;
  GenerateOptions gen;
  gen.on_token = [&](const TokenEvent& e) { events.push_back(e); };
  GenerateResult result = engine.generate(reqs, gen);
  const auto& first = result.requests[0];
  // The stop token may appear earlier in the reference continuation.
  const auto& ref = reference_->requests[0].tokens;
  const size_t expected_len =
      static_cast<size_t>(std::find(ref.begin(), ref.end(), stop) - ref.begin()) + 1;
  EXPECT_EQ(first.tokens.size(), expected_len);
  EXPECT_EQ(first.finish, FinishReason::kStopToken);
  EXPECT_EQ(result.requests[1].finish, FinishReason::kLength);
  size_t total = 0;
  for (const auto& r : result.requests)
    total += r.tokens.size();
  EXPECT_EQ(events.size(), total);
  int finished = 0;
  for (const auto& e : events)
    finished += e.finished;
  EXPECT_EQ(finished, 3);
}

TEST_F(EngineTest, LogitsOfGeneratedTokensOnly) {
  Engine engine = Engine::open(dir_->path(), {.n_stages = 2});
  GenerateResult result = engine.generate(requests(), {.return_logits = true});
  for (size_t r = 0; r < 3; ++r) {
    const auto& got = result.requests[r];
    const auto& ref = reference_->requests[r];
    ASSERT_EQ(got.logits_rows, 6);  // one row per generated token
    const int64_t vocab = engine.config().vocab_size;
    // They are the last 6 rows of the all-logits output.
    std::span<const float> tail(ref.logits.data() + (ref.logits_rows - 6) * vocab, 6 * vocab);
    EXPECT_LE(test::relative_error(got.logits, tail), 1e-5);
  }
}

TEST_F(EngineTest, BadInputIsRefusedClearly) {
  Engine engine =
      Engine::open(dir_->path(), {.n_stages = 2, .capacity = {.max_batch = 2, .max_context = 64}});
  auto with = [&](auto change) {
    std::vector<Request> reqs(1);
    reqs[0].prompt = {1, 2, 3};
    change(reqs);
    return error_of([&] { engine.generate(reqs); });
  };
  EXPECT_NE(with([](auto& r) {
              r[0].prompt[1] = 512;
            }).find("token id 512 at prompt position 1 is outside the vocabulary [0, 512)"),
            std::string::npos);
  EXPECT_NE(with([](auto& r) { r[0].prompt[0] = -4; }).find("token id -4"), std::string::npos);
  EXPECT_NE(with([](auto& r) { r[0].prompt.clear(); }).find("empty prompt"), std::string::npos);
  EXPECT_NE(with([](auto& r) { r[0].max_new_tokens = 62; }).find("exceeds max_context 64"),
            std::string::npos);
  EXPECT_NE(
      with([](auto& r) { r.resize(3, r[0]); }).find("batch of 3 requests exceeds max_batch 2"),
      std::string::npos);
  EXPECT_NE(with([](auto& r) { r[0].sampling.top_p = 2; }).find("top_p is 2"), std::string::npos);
  // The engine is still fine after refusals.
  std::vector<Request> ok(1);
  ok[0].prompt = {1, 2, 3};
  ok[0].max_new_tokens = 2;
  EXPECT_EQ(engine.generate(ok).requests[0].tokens.size(), 2u);

  EXPECT_NE(error_of([&] { Engine::open(dir_->path() / "nope", {}); }).find("does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Engine::open(dir_->path(), {.n_stages = 7}); }).find("only 6 layers"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Engine::open(dir_->path(), {.partition = "3,2"}); }).find("sum"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              Engine::open(dir_->path(), {.capacity = {.max_context = 100000}});
            }).find("max_position_embeddings"),
            std::string::npos);
  // NCCL moves device buffers: on the cpu backend it is refused before any weights load.
  const std::string nccl_on_cpu = error_of([&] {
    Engine::open(dir_->path(), {.n_stages = 2, .device = {.transport = Transport::kNccl}});
  });
  EXPECT_NE(nccl_on_cpu.find("nccl transport"), std::string::npos) << nccl_on_cpu;
  EXPECT_NE(nccl_on_cpu.find("--backend cuda"), std::string::npos) << nccl_on_cpu;
}

// Every (stage, instruction) of a prefill step and of a decode step: the failure names the
// stage and instruction, and the same engine then reproduces the reference.
TEST_F(EngineTest, FaultInjectionAtEveryInstruction) {
  const int stages = 3;
  // Step 0 is the prefill of the first call; step 2 is its second decode step. Programs of
  // stage s have 2M+1 (s = 0) or 3M+1 instructions, M = 2 here; the last, Commit, only marks
  // the stage done. The doubles of tests/common/faults.hpp throw at the others.
  for (int64_t step : {int64_t{0}, int64_t{2}}) {
    for (int stage = 0; stage < stages; ++stage) {
      const int n_instructions = stage == 0 ? 5 : 7;
      for (int instruction = 0; instruction + 1 < n_instructions; ++instruction) {
        const EngineOptions options{
            .n_stages = stages,
            .schedule = {.prefill_micro_batches = 2, .decode_micro_batches = 2}};
        auto faults =
            test::FaultInjector::create({.stage = stage, .step = step, .instruction = instruction});
        Engine engine = faults->hooks().open(dir_->path(), options);
        const std::string message =
            error_of([&] { engine.generate(requests(), logits_options()); });
        EXPECT_NE(message.find(fmt_where(stage, instruction)), std::string::npos) << message;
        EXPECT_NE(message.find(fmt::format(") of step {} (", step)), std::string::npos) << message;
        EXPECT_NE(message.find("injected fault"), std::string::npos) << message;
        // Later steps have other numbers, so the fault does not fire again.
        expect_matches_reference(engine.generate(requests(), logits_options()), message);
      }
    }
  }
}

}  // namespace
}  // namespace conveyor
