// Pipelines across MPI ranks (run by ctest under mpirun with 2 and 3 ranks): every rank opens
// the same engine; rank 0 runs the requests and checks them against a one-process engine, the
// others follow. Tokens must be identical and logits within 1e-5 (the same kernels run the same
// sums, so they are in fact equal).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <tuple>

#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/process_group.hpp"
#include "conveyor/tokenizer.hpp"
#include "dist/distributed.hpp"
#include "engine/cuda_plugin_loader.hpp"

namespace conveyor {
namespace {

std::shared_ptr<ProcessGroup> g_world;

bool leader() {
  return g_world->rank() == 0;
}
int ranks() {
  return g_world->size();
}

// Rank 0's value on every rank (the tests' own control flow across ranks).
int broadcast(int value) {
  MPI_Bcast(&value, 1, MPI_INT, 0, MPI_COMM_WORLD);
  return value;
}

using test::error_of;

std::vector<Request> requests() {
  std::vector<Request> reqs = test::mixed_requests(5);
  reqs[2].sampling = {.temperature = 0.9, .top_k = 40, .top_p = 0.9, .seed = 3};
  return reqs;
}
GenerateOptions logits_options() {
  return {.return_logits = true, .all_logits = true};
}

void expect_same(const GenerateResult& got, const GenerateResult& want, const std::string& what) {
  ASSERT_EQ(got.requests.size(), want.requests.size()) << what;
  for (size_t r = 0; r < got.requests.size(); ++r) {
    const RequestResult& a = got.requests[r];
    const RequestResult& b = want.requests[r];
    EXPECT_EQ(a.finish, b.finish) << what << " request " << r << ": " << a.error;
    EXPECT_EQ(a.tokens, b.tokens) << what << " request " << r;
    ASSERT_EQ(a.logits_rows, b.logits_rows) << what << " request " << r;
    EXPECT_LE(test::relative_error(a.logits, b.logits), 1e-5) << what << " request " << r;
  }
}

// Opens the engine on every rank (with `hooks` when given); a follower runs the leader's steps
// until the leader closes its engine and gets nullopt, the leader gets the engine.
std::optional<Engine> open_everywhere(const std::filesystem::path& model, EngineOptions options,
                                      const detail::EngineHooks* hooks = nullptr) {
  options.processes = g_world;
  Engine engine = hooks ? hooks->open(model, options) : Engine::open(model, options);
  if (!engine.leader()) {
    engine.follow();
    return std::nullopt;
  }
  return engine;
}

class MpiEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("conveyor-mpi");  // one per rank: each writes the same model
    test::make_tiny_model(dir_->path(), 6, 21);
  }
  static void TearDownTestSuite() { delete dir_; }
  static const std::filesystem::path& model() { return dir_->path(); }

  static test::TempDir* dir_;
};
test::TempDir* MpiEngineTest::dir_ = nullptr;

TEST_F(MpiEngineTest, MatchesOneProcess) {
  for (const int per_rank : {1, 2}) {
    for (const int micro : {1, 4}) {
      for (const int64_t chunk : {int64_t{0}, int64_t{4}}) {
        const int stages = per_rank * ranks();
        EngineOptions options{.n_stages = stages};
        options.schedule.prefill_micro_batches = micro;
        options.schedule.chunking = chunk > 0 ? Chunking::fixed(chunk) : Chunking::never();
        options.link_timeout_ms = 30'000;
        const std::string what =
            fmt::format("{} ranks, S={} M={} chunk={}", ranks(), stages, micro, chunk);
        std::optional<Engine> engine = open_everywhere(model(), options);
        if (!engine) continue;
        EXPECT_EQ(engine->stage_reports().size(), static_cast<size_t>(stages)) << what;
        EXPECT_NE(engine->stage_reports().back().find(fmt::format("rank {} on", ranks() - 1)),
                  std::string::npos)
            << engine->stage_reports().back();
        const GenerateResult got = engine->generate(requests(), logits_options());
        Engine local = Engine::open(model(), {.n_stages = stages, .schedule = options.schedule});
        expect_same(got, local.generate(requests(), logits_options()), what);
        // The engine stays in step across calls (slots reused, cohorts of one).
        expect_same(engine->generate(requests(), logits_options()),
                    local.generate(requests(), logits_options()), what + ", second call");
        const EngineMetrics m = engine->metrics();
        ASSERT_EQ(m.stage_busy_seconds.size(), static_cast<size_t>(stages));
        for (double busy : m.stage_busy_seconds)
          EXPECT_GT(busy, 0.0) << what << ": every stage reported its busy time";
      }
    }
  }
}

// Serving across ranks: requests that arrive over time, cohort decode, cancellation.
TEST_F(MpiEngineTest, ServesRequestsAsTheyArrive) {
  EngineOptions options{.n_stages = ranks()};
  options.schedule.decode_mode = DecodeMode::kCohorts;
  options.link_timeout_ms = 30'000;
  std::optional<Engine> engine = open_everywhere(model(), options);
  if (!engine) return;
  Engine local = Engine::open(model(), {.n_stages = ranks()});
  const GenerateResult want = local.generate(requests(), {});
  engine->start_serving();
  std::vector<std::promise<RequestResult>> done(want.requests.size());
  for (size_t r = 0; r < done.size(); ++r) {
    engine->submit(requests()[r], [&done, r](const RequestEvent& e) {
      if (e.finished) done[r].set_value(*e.result);
    });
  }
  for (size_t r = 0; r < done.size(); ++r) {
    const RequestResult got = done[r].get_future().get();
    EXPECT_EQ(got.tokens, want.requests[r].tokens) << "request " << r << ": " << got.error;
  }
  engine->stop_serving();
}

// A fault at every (stage, instruction) of a prefill step and of a decode step, whichever rank
// runs the stage: the error names it on rank 0, every rank rolls back, and the same engine then
// reproduces a clean run.
TEST_F(MpiEngineTest, FaultAtEveryRankAndInstruction) {
  const int stages = ranks();
  EngineOptions options{.n_stages = stages,
                        .schedule = {.prefill_micro_batches = 2, .decode_micro_batches = 2}};
  options.link_timeout_ms = 30'000;
  std::optional<GenerateResult> clean;
  if (leader()) {
    clean = Engine::open(model(), {.n_stages = stages, .schedule = options.schedule})
                .generate(requests(), logits_options());
  }
  // Programs of stage s have 2M+1 (s = 0) or 3M+1 instructions (M = 2); the last, Commit,
  // cannot fail. Step 0 is the prefill, step 2 the second decode step.
  for (const int64_t step : {int64_t{0}, int64_t{2}}) {
    for (int stage = 0; stage < stages; ++stage) {
      const int n_instructions = stage == 0 ? 5 : 7;
      for (int instruction = 0; instruction + 1 < n_instructions; ++instruction) {
        SCOPED_TRACE(
            fmt::format("fault at stage {} instruction {} of step {}", stage, instruction, step));
        auto faults =
            test::FaultInjector::create({.stage = stage, .step = step, .instruction = instruction});
        const detail::EngineHooks hooks = faults->hooks();
        std::optional<Engine> engine = open_everywhere(model(), options, &hooks);
        if (!engine) continue;
        const std::string message =
            error_of([&] { engine->generate(requests(), logits_options()); });
        const std::string where =
            fmt::format("stage {} failed at instruction {} (", stage, instruction);
        EXPECT_NE(message.find(where), std::string::npos) << message;
        EXPECT_NE(message.find(fmt::format(") of step {} (", step)), std::string::npos) << message;
        EXPECT_NE(message.find("injected fault"), std::string::npos) << message;
        // Stage s runs on rank s: a follower's failure says which rank it came from.
        if (stage > 0) {
          EXPECT_NE(message.find(fmt::format("rank {}: stage {} failed", stage, stage)),
                    std::string::npos)
              << message;
        }
        expect_same(engine->generate(requests(), logits_options()), *clean, message);
      }
    }
  }
}

// What only the leader may do, and what only a follower does; options that differ between
// ranks fail everywhere at open.
TEST_F(MpiEngineTest, RolesAndMismatchedOptions) {
  {
    EngineOptions options{.n_stages = ranks(), .processes = g_world};
    Engine engine = Engine::open(model(), options);
    if (engine.leader()) {
      const std::string message = error_of([&] { engine.follow(); });
      EXPECT_NE(message.find("rank 0 runs the requests"), std::string::npos) << message;
    } else {
      const std::string message = error_of([&] { engine.generate(requests()); });
      EXPECT_NE(message.find(fmt::format("rank {}", g_world->rank())), std::string::npos)
          << message;
      EXPECT_NE(message.find("follow()"), std::string::npos) << message;
      engine.follow();
    }
  }
  EngineOptions options{.n_stages = ranks(), .processes = g_world};
  options.capacity.max_batch = 4 + g_world->rank();  // differs on every rank
  const std::string message = error_of([&] { Engine::open(model(), options); });
  EXPECT_NE(message.find("opened a different engine than rank 0"), std::string::npos) << message;
  EXPECT_NE(message.find("max_batch 4,"), std::string::npos) << message;
  EXPECT_NE(message.find("max_batch 5,"), std::string::npos) << message;

  // A stage count the ranks cannot share.
  if (ranks() > 1) {
    const std::string uneven =
        error_of([&] { Engine::open(model(), {.n_stages = ranks() + 1, .processes = g_world}); });
    EXPECT_NE(uneven.find("cannot be shared by"), std::string::npos) << uneven;
  }
}

// A model that only rank 0's host has: every rank fails at open, naming the first rank without it
// (nobody is left waiting for the others).
TEST_F(MpiEngineTest, AModelMissingOnOneRankFailsOnEveryRank) {
  const std::filesystem::path path = leader() ? model() : model() / "missing";
  const std::string message =
      error_of([&] { Engine::open(path, {.n_stages = ranks(), .processes = g_world}); });
  if (ranks() > 1) {
    EXPECT_NE(message.find("rank 1: "), std::string::npos) << message;
    EXPECT_NE(message.find("missing"), std::string::npos) << message;
  }
}

// The channel a CUDA link between processes sends its headers and NCCL ids over: FIFO between
// neighbours (posted messages too), a silent peer is a timeout that names it, a stop request
// ends a wait.
TEST(MpiPeerChannel, InOrderWithTimeoutsAndStop) {
  auto processes = dist::Distributed::create(*g_world, std::chrono::milliseconds(30'000));
  const int rank = processes->rank();
  std::unique_ptr<PeerChannel> next, previous;
  if (rank + 1 < ranks()) next = processes->make_peer_channel(rank + 1);
  if (rank > 0) previous = processes->make_peer_channel(rank - 1);
  const auto bytes_of = [](const std::string& text) {
    std::vector<std::byte> out(text.size());
    std::memcpy(out.data(), text.data(), text.size());
    return out;
  };
  const auto text_of = [](const std::vector<std::byte>& bytes) {
    return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  };
  const std::chrono::milliseconds timeout(10'000);
  if (next) {
    for (int i = 0; i < 3; ++i)
      next->send(bytes_of(fmt::format("{} from {}", i, rank)), timeout, {});
    next->post(bytes_of(fmt::format("posted by {}", rank)));  // behind the sends, not awaited
  }
  if (previous) {
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(text_of(previous->recv(timeout, {})), fmt::format("{} from {}", i, rank - 1));
    EXPECT_EQ(text_of(previous->recv(timeout, {})), fmt::format("posted by {}", rank - 1));
    const std::string silent =
        error_of([&] { previous->recv(std::chrono::milliseconds(200), {}); });
    EXPECT_NE(silent.find(fmt::format("rank {}", rank - 1)), std::string::npos) << silent;
    try {
      previous->recv(timeout, [] { return true; });
      ADD_FAILURE() << "a stopped receive returned";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kAborted) << e.what();
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);  // nobody leaves (and frees the session) while others wait
}

// CUDA stages as ranks, one GPU per rank on this host: activations cross between processes over
// NCCL (a communicator per neighbouring pair, its id sent over MPI). Against the same stages in
// one process; then a failed receive on the last rank and a failed send on rank 0, after which the
// links' communicators are made again and the engine reproduces the clean run. Skips without a
// GPU per rank.
TEST_F(MpiEngineTest, CudaStagesOverNcclMatchOneProcess) {
  int gpus = 0;
  std::string why;
  try {
    gpus = cuda_device_count();
  } catch (const Error& e) {
    why = e.what();
  }
  MPI_Allreduce(MPI_IN_PLACE, &gpus, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (gpus < ranks()) {
    GTEST_SKIP() << fmt::format("needs {} CUDA devices on this host (one per rank), {} visible{}",
                                ranks(), gpus, why.empty() ? "" : ": " + why);
  }
  EngineOptions options{.n_stages = ranks(), .device = {.backend = BackendKind::kCuda}};
  options.link_timeout_ms = 60'000;
  for (const int micro : {1, 4}) {
    options.schedule.prefill_micro_batches = micro;
    std::optional<Engine> engine = open_everywhere(model(), options);
    if (!engine) continue;
    const GenerateResult want =
        Engine::open(model(), options).generate(requests(), logits_options());
    expect_same(engine->generate(requests(), logits_options()), want,
                fmt::format("cuda, {} ranks, M={}", ranks(), micro));
  }
  // A failed receive on the last rank and a failed send on rank 0: both cancel every link, and
  // the links' communicators are made again before the next step.
  const int last = ranks() - 1;
  for (const auto& [stage, instruction, where] :
       {std::tuple{last, 0, fmt::format("rank {}: stage {} failed at instruction 0", last, last)},
        std::tuple{0, 1, std::string("stage 0 failed at instruction 1")}}) {
    auto faults =
        test::FaultInjector::create({.stage = stage, .step = 0, .instruction = instruction});
    const detail::EngineHooks hooks = faults->hooks();
    std::optional<Engine> engine = open_everywhere(model(), options, &hooks);
    if (!engine) continue;
    const std::string message = error_of([&] { engine->generate(requests(), logits_options()); });
    EXPECT_NE(message.find(where), std::string::npos) << message;
    expect_same(engine->generate(requests(), logits_options()),
                Engine::open(model(), options).generate(requests(), logits_options()),
                "cuda, after a failed step: " + message);
  }
}

// SmolLM2-135M-Instruct (the fetched GGUF asset) over the ranks against one process, with one
// and four prefill micro-batches, whole and chunked prompts.
TEST(MpiRealModel, SmolLm2MatchesOneProcess) {
  const char* kSmolLm2 = "SmolLM2-135M-Instruct.Q4_1.gguf";
  const std::optional<std::filesystem::path> path = test::asset_path(kSmolLm2);
  if (broadcast(path ? 1 : 0) == 0 || !path) {
    GTEST_SKIP() << test::missing_asset_reason(kSmolLm2, "smollm2");
  }
  const Tokenizer tokenizer = Tokenizer::open(*path);
  std::vector<Request> requests(4);
  const char* prompts[] = {"The capital of France is", "Write a haiku about rivers.", "1, 2, 3, 4,",
                           "Bread is made of"};
  for (size_t r = 0; r < requests.size(); ++r) {
    requests[r].prompt = tokenizer.encode(prompts[r]);
    requests[r].max_new_tokens = 6;
  }
  const GenerateOptions gen{.return_logits = true};
  for (const int micro : {1, 4}) {
    for (const int64_t chunk : {int64_t{0}, int64_t{4}}) {
      EngineOptions options{.n_stages = ranks(), .link_timeout_ms = 60'000};
      options.schedule.prefill_micro_batches = micro;
      options.schedule.chunking = chunk > 0 ? Chunking::fixed(chunk) : Chunking::never();
      std::optional<Engine> engine = open_everywhere(*path, options);
      if (!engine) continue;
      const std::string what =
          fmt::format("SmolLM2, {} ranks, M={} chunk={}", ranks(), micro, chunk);
      const GenerateResult got = engine->generate(requests, gen);
      Engine local = Engine::open(*path, {.n_stages = ranks(), .schedule = options.schedule});
      expect_same(got, local.generate(requests, gen), what);
      EXPECT_EQ(got.requests[0].tokens.size(), 6u) << what;
    }
  }
}

}  // namespace
}  // namespace conveyor

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  conveyor::g_world = conveyor::mpi_world(&argc, &argv);
  if (conveyor::g_world->rank() != 0) {
    // One report: rank 0's (a follower's failures still fail the job's exit status).
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (failed != 0) std::fprintf(stderr, "rank %d: tests failed\n", conveyor::g_world->rank());
  conveyor::g_world.reset();
  return any;
}
