// SchedulePolicy (chunking, micro-batches, cohorts, per-step prompt budgets) and the validator of
// schedules with several steps in flight.
#include <gtest/gtest.h>

#include <vector>

#include "common/test_util.hpp"
#include "conveyor/error.hpp"
#include "conveyor/schedule.hpp"
#include "conveyor/step_plan.hpp"
#include "plan/plan_builders.hpp"

namespace conveyor {
namespace {

TEST(Chunking, ParsesTheThreeSpellings) {
  EXPECT_EQ(Chunking::parse("auto"), Chunking::automatic());
  EXPECT_EQ(Chunking::parse("never"), Chunking::never());
  EXPECT_EQ(Chunking::parse("256"), Chunking::fixed(256));
  for (const char* text : {"auto", "never", "64"})
    EXPECT_EQ(Chunking::parse(text).to_string(), text);
  for (const char* bad : {"0", "-1", "12x", "", "Auto"}) {
    test::expect_invalid([&] { Chunking::parse(bad); },
                         {"\"auto\", \"never\" or a chunk size", std::string("\"") + bad + "\""});
  }
  EXPECT_EQ(parse_decode_mode("cohorts"), DecodeMode::kCohorts);
  EXPECT_EQ(to_string(DecodeMode::kStrict), "strict");
  test::expect_invalid([] { parse_decode_mode("fast"); }, {"\"fast\"", "strict", "cohorts"});
  test::expect_invalid([] { SchedulePolicy{.cohorts = -1}.validate(); }, {"cohorts is -1"});
  test::expect_invalid([] { SchedulePolicy{.chunking = Chunking::fixed(0)}.validate(); },
                       {"fixed chunk size must be >= 1"});
}

TEST(SchedulePolicy, AutomaticChunkingFillsThePipelineOnlyWhenPromptsAreFew) {
  const SchedulePolicy automatic;
  const std::vector<int64_t> one = {100};
  // One prompt, 4 stages: 4 chunks of 25.
  EXPECT_EQ(prefill_chunk_tokens(automatic, 4, one), 25);
  // As many prompts as micro-batches: whole prompts.
  EXPECT_EQ(prefill_chunk_tokens(automatic, 2, std::vector<int64_t>{100, 7}), 0);
  // Never below the minimum chunk, and no chunking when one chunk would hold the prompt.
  EXPECT_EQ(prefill_chunk_tokens(automatic, 8, std::vector<int64_t>{40}),
            SchedulePolicy::kMinAutoChunkTokens);
  EXPECT_EQ(prefill_chunk_tokens(automatic, 4, std::vector<int64_t>{10}), 0);
  EXPECT_EQ(prefill_chunk_tokens({.prefill_micro_batches = 6}, 1, one), 17);
  EXPECT_EQ(prefill_chunk_tokens({.chunking = Chunking::never()}, 4, one), 0);
  EXPECT_EQ(prefill_chunk_tokens({.chunking = Chunking::fixed(9)}, 4, one), 9);
  EXPECT_EQ(step_prompt_budget(automatic), SchedulePolicy::kAutoStepPromptTokens);
  EXPECT_EQ(step_prompt_budget({.chunking = Chunking::fixed(9)}), 9);
  EXPECT_EQ(step_prompt_budget({.chunking = Chunking::never()}), 0);
}

TEST(SchedulePolicy, CohortsAreAtMostTheStagesAndTheSequences) {
  const SchedulePolicy cohorts{.decode_mode = DecodeMode::kCohorts};
  EXPECT_EQ(cohort_count({}, 4, 8), 1);  // strict
  EXPECT_EQ(cohort_count(cohorts, 4, 8), 4);
  EXPECT_EQ(cohort_count(cohorts, 4, 2), 2);
  EXPECT_EQ(cohort_count(cohorts, 4, 0), 1);
  EXPECT_EQ(cohort_count({.decode_mode = DecodeMode::kCohorts, .cohorts = 2}, 4, 8), 2);
  EXPECT_EQ(pick_cohort(std::vector<int64_t>{3, 1, 1}), 1);
  EXPECT_EQ(pick_cohort(std::vector<int64_t>{0, 0}), 0);
}

TEST(SchedulePolicy, StepWorkSharesABudgetOfPromptTokensBesideDecodes) {
  const SchedulePolicy policy{.chunking = Chunking::fixed(8)};
  // Nothing decodes: every prompt comes whole (the plan chunks it).
  std::vector<SeqWork> work = step_work(policy, {}, {{0, 0, 20}, {1, 5, 9}});
  ASSERT_EQ(work.size(), 2u);
  EXPECT_EQ(work[0], (SeqWork{.seq = 0, .committed = 0, .n_tokens = 20, .prompt = true}));
  EXPECT_EQ(work[1], (SeqWork{.seq = 1, .committed = 5, .n_tokens = 4, .prompt = true}));
  // With decodes, the prompts share 8 tokens first come, first served; only a share that
  // reaches the prompt's end samples.
  work = step_work(policy, {{2, 30}, {3, 12}}, {{0, 0, 20}, {1, 5, 9}});
  ASSERT_EQ(work.size(), 3u);
  EXPECT_EQ(work[0], (SeqWork{.seq = 2, .committed = 30}));
  EXPECT_EQ(work[1], (SeqWork{.seq = 3, .committed = 12}));
  EXPECT_EQ(work[2],
            (SeqWork{.seq = 0, .committed = 0, .n_tokens = 8, .sample = false, .prompt = true}));
  work = step_work(policy, {{2, 30}}, {{0, 16, 20}, {1, 5, 9}});
  ASSERT_EQ(work.size(), 3u);
  EXPECT_EQ(work[1], (SeqWork{.seq = 0, .committed = 16, .n_tokens = 4, .prompt = true}));
  EXPECT_EQ(work[2], (SeqWork{.seq = 1, .committed = 5, .n_tokens = 4, .prompt = true}));
}

TEST(SchedulePolicy, PlanStepPicksDecodePrefillOrMixedPlans) {
  const SchedulePolicy strict;
  // Decodes only: a decode plan of min(S, n) groups.
  StepPlan plan = plan_step(strict, 2, 7, {{.seq = 0, .committed = 4}, {.seq = 1, .committed = 9}});
  EXPECT_EQ(plan.phase, Phase::kDecode);
  EXPECT_EQ(plan.micro_batches.size(), 2u);
  // A cohort's decode step is one micro-batch (the other cohorts fill the pipeline).
  plan =
      plan_step({.decode_mode = DecodeMode::kCohorts}, 2, 8,
                {{.seq = 0, .committed = 4}, {.seq = 1, .committed = 9}}, LogitsRows::kSampled, 1);
  EXPECT_EQ(plan.micro_batches.size(), 1u);
  EXPECT_EQ(plan.cohort, 1);
  // One prompt alone: chunked to fill 4 stages.
  plan = plan_step(strict, 4, 9, {{.seq = 0, .n_tokens = 100, .prompt = true}});
  EXPECT_EQ(plan.phase, Phase::kPrefill);
  EXPECT_EQ(plan.micro_batches.size(), 4u);
  // A prompt share beside decodes: sequence groups, no chunking; only the final share samples.
  plan = plan_step(strict, 2, 10,
                   {{.seq = 1, .committed = 9},
                    {.seq = 0, .committed = 0, .n_tokens = 8, .sample = false, .prompt = true}});
  EXPECT_EQ(plan.phase, Phase::kPrefill);
  EXPECT_EQ(plan.n_tokens(), 9);
  EXPECT_EQ(plan.micro_batches.size(), 2u);
  plan.validate();
  // With every logits row wanted, every micro-batch of a prompt step samples.
  plan = plan_step(strict, 2, 11, {{.seq = 0, .n_tokens = 6, .prompt = true}}, LogitsRows::kAll);
  int samples = 0;
  for (const Instruction& ins : plan.programs.back())
    samples += ins.kind == OpKind::kSample;
  EXPECT_EQ(samples, static_cast<int>(plan.micro_batches.size()));
  test::expect_invalid(
      [&] { plan_step(strict, 2, 12, {{.seq = 0, .committed = 3, .n_tokens = 2}}); },
      {"sequence 0 decodes 2 token(s)", "SeqWork::prompt"});
}

// --- schedules with several steps in flight ---------------------------------------------------

StepPlan cohort_decode(int64_t step, int32_t cohort, std::vector<SeqState> seqs, int n_stages) {
  StepPlan plan = build_decode_plan(step, seqs, {.n_stages = n_stages, .n_micro_batches = 1});
  plan.cohort = cohort;
  return plan;
}

using Kind = ScheduleEvent::Kind;

// Two cohorts over three stages, each with steps t, t+1: the engine's cohort schedule.
PipelineSchedule two_cohorts() {
  PipelineSchedule s{.n_stages = 3};
  s.plans = {cohort_decode(0, 0, {{0, 5}, {1, 5}}, 3), cohort_decode(1, 1, {{2, 5}, {3, 5}}, 3),
             cohort_decode(2, 0, {{0, 6}, {1, 6}}, 3), cohort_decode(3, 1, {{2, 6}, {3, 6}}, 3)};
  s.events = {{Kind::kSubmit, 0},   {Kind::kSubmit, 1}, {Kind::kComplete, 0}, {Kind::kSubmit, 2},
              {Kind::kComplete, 1}, {Kind::kSubmit, 3}, {Kind::kComplete, 2}, {Kind::kComplete, 3}};
  return s;
}

TEST(ScheduleValidate, AcceptsInterleavedCohorts) {
  validate(two_cohorts());
  // Released slots may join another cohort.
  PipelineSchedule s = two_cohorts();
  s.plans.push_back(cohort_decode(4, 1, {{0, 0}}, 3));
  s.events.push_back({Kind::kRelease, -1, 0});
  s.events.push_back({Kind::kSubmit, 4});
  validate(s);
}

TEST(ScheduleValidate, RejectsANextStepBeforeTheCommit) {
  PipelineSchedule s = two_cohorts();
  // Cohort 0's step 2 submitted before step 0 completed.
  s.events = {{Kind::kSubmit, 0}, {Kind::kSubmit, 1}, {Kind::kSubmit, 2}};
  test::expect_invalid([&] { validate(s); }, {"schedule is invalid (step dependency)", "step 2",
                                              "sequence 0", "step 0 has not completed"});
  // Steps of a sequence out of order.
  s.events = {{Kind::kSubmit, 2}, {Kind::kComplete, 2}, {Kind::kSubmit, 0}};
  test::expect_invalid([&] { validate(s); }, {"(step dependency)", "comes after its step 2"});
}

TEST(ScheduleValidate, RejectsASequenceInTwoCohorts) {
  PipelineSchedule s = two_cohorts();
  s.plans[3] = cohort_decode(3, 1, {{2, 6}, {0, 7}}, 3);  // sequence 0 also in cohort 1
  s.events = {{Kind::kSubmit, 0}, {Kind::kSubmit, 1},   {Kind::kComplete, 0},
              {Kind::kSubmit, 2}, {Kind::kComplete, 1}, {Kind::kComplete, 2},
              {Kind::kSubmit, 3}, {Kind::kComplete, 3}};
  test::expect_invalid([&] { validate(s); },
                       {"schedule is invalid (cohort)", "sequence 0", "belongs to cohort 0"});
}

TEST(ScheduleValidate, RejectsMalformedSchedules) {
  PipelineSchedule s = two_cohorts();
  s.events.push_back({Kind::kComplete, 3});
  test::expect_invalid([&] { validate(s); }, {"(plan shape)", "step 3 completes but"});
  s = two_cohorts();
  s.events.pop_back();
  s.events.erase(s.events.begin() + 5);  // step 3 never submitted
  test::expect_invalid([&] { validate(s); }, {"(plan shape)", "step 3 is planned but never"});
  s = two_cohorts();
  s.plans[1].step = 0;
  test::expect_invalid([&] { validate(s); }, {"two plans have step number 0"});
  s = two_cohorts();
  s.plans[2].programs[0].pop_back();  // a plan that is invalid on its own
  test::expect_invalid([&] { validate(s); }, {"step plan 2 is invalid (step dependency)"});
  s = two_cohorts();
  s.events.push_back({Kind::kRelease, -1, 2});
  s.events.insert(s.events.begin() + 2, {Kind::kRelease, -1, 2});  // while its step is in flight
  test::expect_invalid([&] { validate(s); }, {"sequence 2 is released while its step 1"});
}

}  // namespace
}  // namespace conveyor
