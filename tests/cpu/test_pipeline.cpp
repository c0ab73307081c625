// Pipeline: the KV commit barrier. A step that fails anywhere commits nothing on any stage, the
// next step runs as if the failed one never happened, and unvalidated plans never run.
#include <gtest/gtest.h>

#include <map>

#include "backend/cpu/cpu_stage.hpp"
#include "common/faults.hpp"
#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/partition.hpp"
#include "conveyor/safetensors.hpp"
#include "plan/plan_builders.hpp"
#include "runtime/pipeline.hpp"

namespace conveyor {
namespace {

class PipelineTest : public ::testing::Test {
 protected:
  static constexpr int kStages = 3;

  void SetUp() override {
    test::make_tiny_model(dir_.path(), 4, 9);
    config_ = ModelConfig::load(dir_.path());
    tokens_ = {{5, 9, 2, 7, 1, 3}, {8, 8, 4}};
    sampling_.resize(2);
  }

  // With `faults`, every stage and link is wrapped by its fault-injection doubles.
  std::unique_ptr<Pipeline> make_pipeline(PipelineOptions options = {},
                                          std::shared_ptr<test::FaultInjector> faults = nullptr) {
    SafeTensors tensors = SafeTensors::open(dir_.path());
    Partition partition = Partition::even(config_.n_layers, kStages);
    std::vector<std::unique_ptr<StageBackend>> stages;
    for (int s = 0; s < kStages; ++s) {
      StageWeightsSpec spec{.first_layer = partition.range(s).first,
                            .last_layer = partition.range(s).last,
                            .embedding = partition.has_embedding(s),
                            .head = partition.has_head(s)};
      stages.push_back(std::make_unique<cpu::CpuStage>(
          config_, load_stage_weights(tensors, config_, spec),
          cpu::CpuStageOptions{.n_threads = 1, .max_seqs = 2, .max_context = 64}));
      if (faults) stages.back() = faults->wrap_stage(s, std::move(stages.back()));
    }
    if (faults) {
      options.make_link = [faults](int from) {
        return faults->wrap_link(from, std::make_unique<HostLink>());
      };
    }
    return std::make_unique<Pipeline>(std::move(stages), options);
  }

  StepContext context() const { return {.tokens = tokens_, .sampling = sampling_}; }

  StepPlan prefill(int64_t step) const {
    return build_prefill_plan(step, {{0, 0, 6}, {1, 0, 3}},
                              {.n_stages = kStages, .n_micro_batches = 2, .chunk_tokens = 2});
  }
  // Decode of both sequences after `generated` tokens were appended to each.
  StepPlan decode(int64_t step) const {
    return build_decode_plan(step,
                             {{0, static_cast<int64_t>(tokens_[0].size()) - 1},
                              {1, static_cast<int64_t>(tokens_[1].size()) - 1}},
                             {.n_stages = kStages, .n_micro_batches = 2});
  }
  void append(const StepResult& result) {
    for (const SampledToken& t : result.tokens)
      tokens_[static_cast<size_t>(t.seq)].push_back(t.token);
  }
  // Prefill of one sequence alone, as the first step of cohort `seq`.
  StepPlan prefill_one(int64_t step, int32_t seq) const {
    const auto n = static_cast<int64_t>(tokens_[static_cast<size_t>(seq)].size());
    StepPlan plan = build_prefill_plan(step, {{seq, 0, n}}, {.n_stages = kStages});
    plan.cohort = seq;
    return plan;
  }
  // Decode of one sequence alone, as the step of cohort `seq`.
  StepPlan decode_one(int64_t step, int32_t seq) const {
    StepPlan plan = build_decode_plan(
        step, {{seq, static_cast<int64_t>(tokens_[static_cast<size_t>(seq)].size()) - 1}},
        {.n_stages = kStages, .n_micro_batches = 1});
    plan.cohort = seq;
    return plan;
  }
  void expect_committed(Pipeline& p, int64_t seq0, int64_t seq1) {
    for (int s = 0; s < kStages; ++s) {
      EXPECT_EQ(p.committed(s, 0), seq0) << "stage " << s;
      EXPECT_EQ(p.committed(s, 1), seq1) << "stage " << s;
    }
  }

  test::TempDir dir_{"conveyor-pipeline"};
  ModelConfig config_;
  std::vector<std::vector<int32_t>> tokens_;
  std::vector<SamplingParams> sampling_;
};

TEST_F(PipelineTest, CommitAdvancesEveryStage) {
  auto p = make_pipeline();
  StepResult r = p->run_step(prefill(0), context());
  ASSERT_EQ(r.tokens.size(), 2u);
  expect_committed(*p, 6, 3);
  append(r);
  append(p->run_step(decode(1), context()));
  expect_committed(*p, 7, 4);
}

TEST_F(PipelineTest, FailedDecodeStepCommitsNothingAnywhere) {
  // The reference continuation, without faults.
  auto clean = make_pipeline();
  const auto saved = tokens_;
  append(clean->run_step(prefill(0), context()));
  append(clean->run_step(decode(1), context()));
  append(clean->run_step(decode(2), context()));
  const auto expected = tokens_;

  for (int stage = 0; stage < kStages; ++stage) {
    // Every instruction but the final Commit, which only marks the stage done.
    const int n_instructions =
        static_cast<int>(decode(1).programs[static_cast<size_t>(stage)].size());
    for (int instruction = 0; instruction + 1 < n_instructions; ++instruction) {
      tokens_ = saved;
      auto faults = test::FaultInjector::create();
      auto p = make_pipeline({}, faults);
      append(p->run_step(prefill(0), context()));
      append(p->run_step(decode(1), context()));
      faults->set({.stage = stage, .step = 2, .instruction = instruction});
      try {
        p->run_step(decode(2), context());
        FAIL() << "no error for fault at stage " << stage << " instruction " << instruction;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("stage " + std::to_string(stage) + " failed"),
                  std::string::npos)
            << e.what();
      }
      // Every stage is back at the commit of step 1; the retried step 2 gives the clean result.
      expect_committed(*p, 7, 4);
      faults->set({});
      append(p->run_step(decode(2), context()));
      EXPECT_EQ(tokens_, expected) << "stage " << stage << " instruction " << instruction;
    }
  }
}

TEST_F(PipelineTest, FailedPrefillLeavesEmptyCaches) {
  auto faults = test::FaultInjector::create({.stage = 2, .step = -1, .instruction = 4});
  auto p = make_pipeline({}, faults);
  EXPECT_THROW(p->run_step(prefill(0), context()), Error);
  expect_committed(*p, 0, 0);
  faults->set({});
  p->run_step(prefill(1), context());
  expect_committed(*p, 6, 3);
}

// A pluggable link (PipelineOptions::make_link, as the NCCL transport uses) whose sends and
// resets can fail, like a communicator that breaks and then cannot be rebuilt at once.
class FlakyLink final : public Link {
 public:
  FlakyLink(int* failing_sends, int* failing_resets)
      : failing_sends_(failing_sends), failing_resets_(failing_resets) {}
  void send(LinkMessage&& message, std::chrono::milliseconds timeout) override {
    if (*failing_sends_ > 0) {
      --*failing_sends_;
      throw Error(ErrorCode::kCommunication, "link send failed");
    }
    inner_.send(std::move(message), timeout);
  }
  LinkMessage recv(std::chrono::milliseconds timeout) override { return inner_.recv(timeout); }
  void cancel() override { inner_.cancel(); }
  void reset() override {
    inner_.reset();
    if (*failing_resets_ > 0) {
      --*failing_resets_;
      throw Error(ErrorCode::kCommunication, "link could not be rebuilt");
    }
  }

 private:
  HostLink inner_;
  int* failing_sends_;
  int* failing_resets_;
};

// A link failure cancels every link; they are reset once nothing runs. A reset that fails keeps
// them cancelled: the step's own failure surfaces first, the next submission tries the reset again
// and refuses its step while it fails, and the pipeline works again once the links do. Nothing
// is committed on the way.
TEST_F(PipelineTest, BrokenLinksAreResetBeforeTheNextStep) {
  int failing_sends = 1;
  int failing_resets = 4;  // two links, two reset attempts
  PipelineOptions options;
  options.make_link = [&](int) {
    return std::make_unique<FlakyLink>(&failing_sends, &failing_resets);
  };
  auto p = make_pipeline(options);
  test::expect_error([&] { p->run_step(prefill(0), context()); }, ErrorCode::kCommunication,
                     {"link send failed", "stage 0 failed"});
  expect_committed(*p, 0, 0);  // the step's KV was rolled back on every stage
  test::expect_error([&] { p->run_step(prefill(0), context()); }, ErrorCode::kCommunication,
                     {"could not be rebuilt"});
  EXPECT_EQ(p->in_flight(), 0u);
  append(p->run_step(prefill(0), context()));
  expect_committed(*p, 6, 3);
}

TEST_F(PipelineTest, RefusesUnvalidatedPlans) {
  auto p = make_pipeline();
  StepPlan plan = prefill(0);
  plan.programs[1].pop_back();  // drop stage 1's Commit
  try {
    p->run_step(plan, context());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is invalid (step dependency)"), std::string::npos)
        << e.what();
  }
  expect_committed(*p, 0, 0);
  StepPlan wrong_shape = prefill(0);
  wrong_shape.n_stages = 2;
  EXPECT_THROW(p->run_step(wrong_shape, context()), Error);
}

// A backend that fails the way third-party code does: with a std:: exception.
class ThrowingStage final : public StageBackend {
 public:
  explicit ThrowingStage(bool fail) : fail_(fail) {}
  std::string describe() const override { return "throwing test stage"; }
  void compute(const MicroBatch& mb, const StepContext&, Activations& a) override {
    if (fail_) throw std::bad_alloc();
    a.host.assign(static_cast<size_t>(mb.n_tokens() * 4), 1.0f);
  }
  void sample(const MicroBatch&, const StepContext&, const Activations&, std::vector<SampledToken>&,
              std::vector<LogitsRow>&) override {}
  void commit(int64_t, std::span<const int32_t>) override { ++commits; }
  void rollback(std::span<const int32_t>) override { ++rollbacks; }
  void truncate(int32_t, int64_t) override {}
  int64_t committed(int32_t) const override { return 0; }

  int commits = 0;
  int rollbacks = 0;

 private:
  bool fail_;
};

TEST(PipelineErrors, StdExceptionsAreNamedAndRolledBack) {
  std::vector<std::unique_ptr<StageBackend>> stages;
  stages.push_back(std::make_unique<ThrowingStage>(false));
  stages.push_back(std::make_unique<ThrowingStage>(true));
  auto* first = static_cast<ThrowingStage*>(stages[0].get());
  Pipeline pipeline(std::move(stages), {});
  std::vector<std::vector<int32_t>> tokens = {{1, 2, 3}};
  std::vector<SamplingParams> sampling(1);
  const StepPlan plan = build_prefill_plan(0, {{0, 0, 3}}, {.n_stages = 2});
  test::expect_error([&] { pipeline.run_step(plan, {.tokens = tokens, .sampling = sampling}); },
                     ErrorCode::kOutOfMemory,
                     {"stage 1 failed at instruction 1 (compute of micro-batch 0)"});
  pipeline.committed(0, 0);  // runs the queued rollbacks
  EXPECT_EQ(first->commits, 0);
  EXPECT_EQ(first->rollbacks, 1);
}

TEST_F(PipelineTest, TraceRecordsEveryInstruction) {
  auto p = make_pipeline();
  const StepPlan plan = prefill(0);
  StepContext traced = context();
  traced.record_trace = true;
  append(p->run_step(plan, traced));
  Trace trace = p->take_trace();
  size_t n = 0;
  for (const auto& program : plan.programs)
    n += program.size();
  EXPECT_EQ(trace.size(), n);
  for (const TraceEvent& e : trace)
    EXPECT_LE(e.start_us, e.end_us);
  EXPECT_TRUE(p->take_trace().empty());
  // Without record_trace a step leaves no events.
  p->run_step(decode(1), context());
  EXPECT_TRUE(p->take_trace().empty());
}

// --- several steps in flight (cohort decode) ---------------------------------------------------

TEST_F(PipelineTest, TwoCohortsInFlightGiveTheSequentialResults) {
  auto strict = make_pipeline();
  const auto saved = tokens_;
  append(strict->run_step(prefill(0), context()));
  for (int64_t step = 1; step <= 3; ++step)
    append(strict->run_step(decode(step), context()));
  const auto expected = tokens_;

  tokens_ = saved;
  auto p = make_pipeline();
  append(p->run_step(prefill_one(0, 0), context()));
  append(p->run_step(prefill_one(1, 1), context()));
  // Cohort 0 is sequence 0, cohort 1 sequence 1; each submits its next step once its previous
  // one came back, so both are in flight together most of the time.
  int64_t next_step = 2;
  std::map<int32_t, int> done;
  p->submit(decode_one(next_step++, 0), context());
  p->submit(decode_one(next_step++, 1), context());
  EXPECT_EQ(p->in_flight(), 2u);
  while (p->in_flight() > 0) {
    StepOutcome out = p->wait_any();
    ASSERT_FALSE(out.error);
    append(out.result);
    if (++done[out.cohort] < 3) p->submit(decode_one(next_step++, out.cohort), context());
  }
  EXPECT_EQ(tokens_, expected);
  expect_committed(*p, 9, 6);
}

TEST_F(PipelineTest, StepDependencyAndCohortsAreEnforcedAtSubmission) {
  auto p = make_pipeline();
  append(p->run_step(prefill(0), context()));  // both sequences in cohort 0
  p->submit(decode_one(1, 0), context());
  // Sequence 0's next step before its step 1 completed: refused, nothing queued.
  StepPlan early = decode_one(2, 0);
  test::expect_invalid([&] { p->submit(early, context()); },
                       {"schedule is invalid (step dependency)", "sequence 0", "step 1"});
  // Once its step completed, sequence 0 may go on, but only in its own cohort.
  append(p->wait_any().result);
  StepPlan moved = decode_one(2, 0);
  moved.cohort = 1;
  test::expect_invalid([&] { p->submit(moved, context()); },
                       {"schedule is invalid (cohort)", "sequence 0", "belongs to cohort 0"});
  test::expect_invalid([&] { p->truncate(0, -1); }, {"-1"});
  p->submit(decode_one(2, 0), context());
  test::expect_invalid([&] { p->truncate(0, 0); }, {"in flight"});
  append(p->wait_any().result);
  test::expect_invalid([&] { p->wait_any(); }, {"no step is in flight"});
  // A released slot may join another cohort.
  p->truncate(0, 0);
  tokens_[0].resize(1);
  StepPlan fresh = build_prefill_plan(3, {{0, 0, 1}}, {.n_stages = kStages});
  fresh.cohort = 1;
  append(p->run_step(fresh, context()));
  expect_committed(*p, 1, 3);
}

// A failure inside one cohort's step, at every stage and instruction: that step fails and rolls
// back alone; the other cohort's step, in flight at the same time, commits; the links stay in
// order, so both cohorts carry on with the clean results.
TEST_F(PipelineTest, AFaultInOneCohortLeavesTheOtherRunning) {
  auto clean = make_pipeline();
  const auto saved = tokens_;
  append(clean->run_step(prefill_one(0, 0), context()));
  append(clean->run_step(prefill_one(1, 1), context()));
  append(clean->run_step(decode_one(2, 0), context()));
  append(clean->run_step(decode_one(3, 1), context()));
  const auto expected = tokens_;

  const StepPlan shape = decode_one(2, 0);
  for (int stage = 0; stage < kStages; ++stage) {
    const int n = static_cast<int>(shape.programs[static_cast<size_t>(stage)].size());
    for (int instruction = 0; instruction + 1 < n; ++instruction) {
      SCOPED_TRACE(testing::Message() << "stage " << stage << " instruction " << instruction);
      tokens_ = saved;
      auto faults = test::FaultInjector::create();
      auto p = make_pipeline({}, faults);
      append(p->run_step(prefill_one(0, 0), context()));
      append(p->run_step(prefill_one(1, 1), context()));
      faults->set({.stage = stage, .step = 2, .instruction = instruction});
      p->submit(decode_one(2, 0), context());
      p->submit(decode_one(3, 1), context());
      std::map<int32_t, StepOutcome> outcomes;
      while (p->in_flight() > 0) {
        StepOutcome out = p->wait_any();
        outcomes[out.cohort] = std::move(out);
      }
      ASSERT_TRUE(outcomes[0].error);
      try {
        std::rethrow_exception(outcomes[0].error);
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("injected fault"), std::string::npos) << e.what();
      }
      // Recv and Send faults leave a link in an unknown state: every link is cancelled and the
      // other cohort's step fails as collateral; compute and sample faults stay in their step.
      const Instruction ins =
          shape.programs[static_cast<size_t>(stage)][static_cast<size_t>(instruction)];
      const bool link_fault = ins.kind == OpKind::kRecv || ins.kind == OpKind::kSend;
      if (link_fault && outcomes[1].error) {
        EXPECT_TRUE(outcomes[1].collateral);
        append(p->run_step(decode_one(4, 1), context()));  // re-run, as the scheduler does
      } else {
        ASSERT_FALSE(outcomes[1].error);
        append(outcomes[1].result);
      }
      expect_committed(*p, 6, 4);  // sequence 0 back at its prefill, sequence 1 one further
      faults->set({});
      append(p->run_step(decode_one(5, 0), context()));
      EXPECT_EQ(tokens_, expected);
    }
  }
}

}  // namespace
}  // namespace conveyor
