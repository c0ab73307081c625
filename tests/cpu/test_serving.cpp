// Serving on the CPU: requests submitted over time (from other threads too) come out as if each
// ran alone; admission is bounded and first come, first served; cancellation frees slots; cohort
// decode gives the strict results; a fault in one cohort's step fails only its requests.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/engine.hpp"
#include "conveyor/error.hpp"

namespace conveyor {
namespace {

constexpr int64_t kLayers = 6;

// Collects the events of submitted requests; waits for their ends.
class Inbox {
 public:
  RequestCallback callback() {
    return [this](const RequestEvent& e) {
      std::lock_guard lock(mutex_);
      if (e.token) tokens_[e.id].push_back(*e.token);
      if (e.finished) {
        results_[e.id] = *e.result;
        order_.push_back(e.id);
        changed_.notify_all();
      }
    };
  }
  // The result of `id` once it finished (pumping engine.step() when `engine` is given).
  RequestResult wait(RequestId id, Engine* engine = nullptr) {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (auto it = results_.find(id); it != results_.end()) return it->second;
      if (engine == nullptr) {
        changed_.wait_for(lock, std::chrono::milliseconds(50));
      } else {
        lock.unlock();
        engine->step();
        lock.lock();
      }
    }
  }
  std::vector<int32_t> streamed(RequestId id) {
    std::lock_guard lock(mutex_);
    return tokens_[id];
  }
  std::vector<RequestId> finish_order() {
    std::lock_guard lock(mutex_);
    return order_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<RequestId, std::vector<int32_t>> tokens_;
  std::map<RequestId, RequestResult> results_;
  std::vector<RequestId> order_;
};

class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir("conveyor-serving");
    test::make_tiny_model(dir_->path(), kLayers, 33);
  }
  static void TearDownTestSuite() { delete dir_; }

  // Six requests of mixed lengths; one samples.
  static std::vector<Request> requests() {
    std::vector<Request> reqs = test::mixed_requests(7);
    std::vector<Request> more = test::mixed_requests(4);
    for (Request& r : more)
      r.prompt.insert(r.prompt.end(), {9, 8, 7});
    reqs.insert(reqs.end(), more.begin(), more.end());
    reqs[4].sampling = {.temperature = 0.8, .top_k = 20, .seed = 11};
    for (Request& r : reqs)
      r.logits = LogitsCapture::kSampled;
    return reqs;
  }
  // Each request alone on one stage: the reference.
  static RequestResult alone(const Request& request) {
    Engine engine = Engine::open(dir_->path(), {});
    return engine.generate({request}).requests[0];
  }
  static void expect_same(const RequestResult& got, const RequestResult& want,
                          const std::string& what) {
    EXPECT_EQ(got.tokens, want.tokens) << what;
    EXPECT_EQ(got.finish, want.finish) << what;
    ASSERT_EQ(got.logits_rows, want.logits_rows) << what;
    EXPECT_LE(test::max_relative_error(got.logits, want.logits), 1e-4) << what;
  }

  static test::TempDir* dir_;
};
test::TempDir* ServingTest::dir_ = nullptr;

TEST_F(ServingTest, RequestsArrivingOverTimeMatchEachRunAlone) {
  const std::vector<Request> reqs = requests();
  std::vector<RequestResult> expected;
  for (const Request& r : reqs)
    expected.push_back(alone(r));
  for (const DecodeMode mode : {DecodeMode::kStrict, DecodeMode::kCohorts}) {
    for (int stages : {1, 2, 3}) {
      const std::string what = fmt::format("{} S={}", to_string(mode), stages);
      // Three slots for six requests, and 4-token prompt shares beside running decodes.
      Engine engine = Engine::open(
          dir_->path(), {.n_stages = stages,
                         .capacity = {.max_batch = 3},
                         .schedule = {.chunking = Chunking::fixed(4), .decode_mode = mode}});
      Inbox inbox;
      std::vector<RequestId> ids;
      // Two arrive at once; the others one per step while those run.
      ids.push_back(engine.submit(reqs[0], inbox.callback()));
      ids.push_back(engine.submit(reqs[1], inbox.callback()));
      for (size_t i = 2; i < reqs.size(); ++i) {
        engine.step();
        ids.push_back(engine.submit(reqs[i], inbox.callback()));
      }
      for (size_t i = 0; i < reqs.size(); ++i) {
        const RequestResult got = inbox.wait(ids[i], &engine);
        expect_same(got, expected[i], fmt::format("{} request {}", what, i));
        EXPECT_EQ(inbox.streamed(ids[i]), got.tokens) << what;
      }
      EXPECT_FALSE(engine.step());  // idle
      const EngineMetrics m = engine.metrics();
      EXPECT_EQ(m.requests_finished, 6) << what;
      EXPECT_EQ(m.kv_slots_used, 0) << what;
      EXPECT_EQ(m.requests_running + m.requests_waiting, 0) << what;
      int64_t generated = 0;
      for (const RequestResult& r : expected)
        generated += static_cast<int64_t>(r.tokens.size());
      EXPECT_EQ(m.generated_tokens, generated) << what;
      ASSERT_EQ(m.stage_busy_seconds.size(), static_cast<size_t>(stages));
      for (double busy : m.stage_busy_seconds)
        EXPECT_GT(busy, 0.0) << what;
    }
  }
}

TEST_F(ServingTest, CohortDecodeGivesTheStrictResults) {
  std::vector<Request> reqs = requests();
  for (Request& r : reqs)
    r.logits = LogitsCapture::kAll;
  Engine strict = Engine::open(dir_->path(), {.n_stages = 3, .capacity = {.max_batch = 6}});
  const GenerateResult want = strict.generate(reqs);
  for (int stages : {2, 3}) {
    for (int cohorts : {0, 2}) {
      Engine engine = Engine::open(
          dir_->path(), {.n_stages = stages,
                         .capacity = {.max_batch = 6},
                         .schedule = {.decode_mode = DecodeMode::kCohorts, .cohorts = cohorts}});
      GenerateOptions traced{.record_trace = true};
      const GenerateResult got = engine.generate(reqs, traced);
      for (size_t i = 0; i < reqs.size(); ++i) {
        expect_same(got.requests[i], want.requests[i],
                    fmt::format("S={} cohorts={} request {}", stages, cohorts, i));
      }
      // Steps of different cohorts were in flight together: some step of one cohort starts
      // before the previous step of another ended.
      std::set<int32_t> seen;
      for (const StepStats& s : got.steps)
        seen.insert(s.cohort);
      EXPECT_EQ(seen.size(), static_cast<size_t>(cohorts > 0 ? cohorts : stages));
      EXPECT_GT(got.decode_tokens, 0);
      EXPECT_FALSE(got.trace.empty());
    }
  }
}

TEST_F(ServingTest, AdmissionIsBoundedAndFirstComeFirstServed) {
  Engine engine = Engine::open(dir_->path(), {.capacity = {.max_batch = 1, .max_waiting = 2}});
  Inbox inbox;
  std::vector<Request> reqs = requests();
  // One takes the free slot, two may wait for it: the fourth is refused, naming the limit.
  const RequestId a = engine.submit(reqs[0], inbox.callback());
  const RequestId b = engine.submit(reqs[1], inbox.callback());
  const RequestId c = engine.submit(reqs[2], inbox.callback());
  test::expect_error([&] { engine.submit(reqs[3], inbox.callback()); }, ErrorCode::kOverloaded,
                     {"2 requests already wait", "max_waiting = 2", "retry later"});
  engine.step();  // admits a; b and c wait for the one slot
  test::expect_error([&] { engine.submit(reqs[3], inbox.callback()); }, ErrorCode::kOverloaded,
                     {"2 requests already wait"});
  inbox.wait(c, &engine);
  EXPECT_EQ(inbox.finish_order(), (std::vector<RequestId>{a, b, c}));
  EXPECT_EQ(engine.metrics().requests_finished, 3);
  // A request that can never fit is refused at once.
  Request huge = reqs[0];
  huge.max_new_tokens = engine.max_context();
  test::expect_invalid([&] { engine.submit(huge, nullptr); },
                       {"exceeds max_context", "--max-context"});
  Request empty;
  test::expect_invalid([&] { engine.submit(empty, nullptr); }, {"empty prompt"});
  Request bad = reqs[0];
  bad.prompt[1] = 100000;
  test::expect_invalid([&] { engine.submit(bad, nullptr); },
                       {"token id 100000 at prompt position 1"});
}

TEST_F(ServingTest, CancelEndsWaitingAndRunningRequestsAndFreesTheirSlots) {
  Engine engine = Engine::open(dir_->path(), {.n_stages = 2, .capacity = {.max_batch = 1}});
  Inbox inbox;
  std::vector<Request> reqs = requests();
  reqs[0].max_new_tokens = 200;
  const RequestId running = engine.submit(reqs[0], inbox.callback());
  const RequestId waiting = engine.submit(reqs[1], inbox.callback());
  engine.step();
  engine.step();
  EXPECT_EQ(engine.metrics().kv_slots_used, 1);
  EXPECT_TRUE(engine.cancel(waiting));
  EXPECT_TRUE(engine.cancel(running));
  const RequestResult w = inbox.wait(waiting, &engine);
  const RequestResult r = inbox.wait(running, &engine);
  EXPECT_EQ(w.finish, FinishReason::kCancelled);
  EXPECT_TRUE(w.tokens.empty());
  EXPECT_EQ(r.finish, FinishReason::kCancelled);
  EXPECT_GE(r.tokens.size(), 1u);
  EXPECT_LT(r.tokens.size(), 200u);
  EXPECT_FALSE(engine.cancel(running));  // already finished
  EXPECT_FALSE(engine.step());
  EXPECT_EQ(engine.metrics().kv_slots_used, 0);
  EXPECT_EQ(engine.metrics().requests_cancelled, 2);
  // The freed slot serves the next request with the right result.
  const RequestId next = engine.submit(reqs[2], inbox.callback());
  expect_same(inbox.wait(next, &engine), alone(reqs[2]), "after cancellation");
}

TEST_F(ServingTest, BackgroundLoopServesManyThreadsAndStopsCleanly) {
  Engine engine = Engine::open(dir_->path(), {.n_stages = 2,
                                              .capacity = {.max_batch = 4},
                                              .schedule = {.chunking = Chunking::fixed(8),
                                                           .decode_mode = DecodeMode::kCohorts}});
  engine.start_serving();
  EXPECT_TRUE(engine.serving());
  test::expect_invalid([&] { engine.generate({requests()[0]}); }, {"serves in the background"});
  const std::vector<Request> reqs = requests();
  std::vector<RequestResult> expected;
  for (const Request& r : reqs)
    expected.push_back(alone(r));
  Inbox inbox;
  std::vector<std::thread> clients;
  std::vector<RequestId> ids(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    clients.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(5 * static_cast<int>(i)));
      ids[i] = engine.submit(reqs[i], inbox.callback());
    });
  }
  for (std::thread& t : clients)
    t.join();
  for (size_t i = 0; i < reqs.size(); ++i)
    expect_same(inbox.wait(ids[i]), expected[i], fmt::format("request {}", i));

  // Stopping with no grace cancels what still runs; later submissions are refused.
  Request longer = reqs[0];
  longer.max_new_tokens = 300;
  const RequestId last = engine.submit(longer, inbox.callback());
  engine.stop_serving(std::chrono::milliseconds(0));
  EXPECT_FALSE(engine.serving());
  const RequestResult cancelled = inbox.wait(last);
  EXPECT_EQ(cancelled.finish, FinishReason::kCancelled);
  test::expect_error([&] { engine.submit(reqs[0], nullptr); }, ErrorCode::kCancelled, {"stopping"});
  EXPECT_EQ(engine.metrics().kv_slots_used, 0);
}

// A fault in one cohort's step, at every stage and instruction of a decode step: its requests
// end with kError naming the stage; the other cohort's requests finish with their clean results.
TEST_F(ServingTest, AFaultInOneCohortFailsOnlyItsRequests) {
  std::vector<Request> reqs = requests();
  reqs.resize(4);
  std::vector<RequestResult> expected;
  for (const Request& r : reqs)
    expected.push_back(alone(r));
  constexpr int kStages = 2;
  const EngineOptions options{.n_stages = kStages,
                              .capacity = {.max_batch = 4},
                              .schedule = {.decode_mode = DecodeMode::kCohorts}};
  // Step numbers: 0 and 1 are the cohorts' prefills; step 2 is cohort 0's first decode step
  // (one micro-batch of two sequences): Compute, Send on stage 0; Recv, Compute, Sample on 1.
  const std::map<int, int> instructions = {{0, 2}, {1, 3}};
  for (const auto& [stage, n] : instructions) {
    for (int instruction = 0; instruction < n; ++instruction) {
      SCOPED_TRACE(fmt::format("stage {} instruction {}", stage, instruction));
      auto faults =
          test::FaultInjector::create({.stage = stage, .step = 2, .instruction = instruction});
      Engine engine = faults->hooks().open(dir_->path(), options);
      Inbox inbox;
      std::vector<RequestId> ids;
      for (const Request& r : reqs)
        ids.push_back(engine.submit(r, inbox.callback()));
      int failed = 0;
      for (size_t i = 0; i < reqs.size(); ++i) {
        const RequestResult got = inbox.wait(ids[i], &engine);
        if (got.finish == FinishReason::kError) {
          ++failed;
          EXPECT_EQ(i % 2, 0u) << "request " << i << " is in cohort 1: " << got.error;
          EXPECT_NE(got.error.find("injected fault"), std::string::npos) << got.error;
          EXPECT_NE(got.error.find(fmt::format("stage {} failed", stage)), std::string::npos)
              << got.error;
        } else {
          expect_same(got, expected[i], fmt::format("request {}", i));
        }
      }
      EXPECT_EQ(failed, 2);  // requests 0 and 2: cohort 0
      EXPECT_EQ(engine.metrics().kv_slots_used, 0);
      // The engine goes on serving with clean results.
      faults->set({});
      const RequestId again = engine.submit(reqs[0], inbox.callback());
      expect_same(inbox.wait(again, &engine), expected[0], "after the fault");
    }
  }
}

// A stage that cannot commit breaks the pipeline for good: every request ends with kError (none
// is lost or left waiting), later submissions are refused with the cause, and the engine still
// stops at once.
TEST_F(ServingTest, ABrokenPipelineEndsEveryRequestAndRefusesNewOnes) {
  auto faults = test::FaultInjector::create({.stage = 1, .step = 1, .commit = true});
  Engine engine =
      faults->hooks().open(dir_->path(), {.n_stages = 2,
                                          .capacity = {.max_batch = 2},
                                          .schedule = {.decode_mode = DecodeMode::kCohorts}});
  engine.start_serving();
  Inbox inbox;
  std::vector<RequestId> ids;
  for (const Request& r : requests())
    ids.push_back(engine.submit(r, inbox.callback()));
  for (RequestId id : ids) {
    const RequestResult r = inbox.wait(id);
    EXPECT_EQ(r.finish, FinishReason::kError) << r.error;
  }
  test::expect_error([&] { engine.submit(requests()[0], nullptr); }, ErrorCode::kInternal,
                     {"injected commit fault", "unusable"});
  const auto start = std::chrono::steady_clock::now();
  engine.stop_serving(std::chrono::seconds(30));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(engine.metrics().kv_slots_used, 0);
}

}  // namespace
}  // namespace conveyor
