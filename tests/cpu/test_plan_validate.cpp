// Tests of validate(StepPlan): hand-built plans that break each pipeline-parallel rule of the
// spec (cross-step pipelining, chunk reordering, skipped stages, FIFO mismatch, deadlock, ...)
// are rejected with the rule named; well-formed plans pass.
#include <gtest/gtest.h>

#include "common/test_util.hpp"

#include <string>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/step_plan.hpp"
#include "plan/plan_builders.hpp"

namespace conveyor {
namespace {

Instruction recv(int32_t m) {
  return {OpKind::kRecv, m};
}
Instruction compute(int32_t m) {
  return {OpKind::kCompute, m};
}
Instruction send(int32_t m) {
  return {OpKind::kSend, m};
}
Instruction sample(int32_t m) {
  return {OpKind::kSample, m};
}
Instruction commit() {
  return {OpKind::kCommit, -1};
}

// Expects validate(plan, options) to throw Error(kInvalidArgument) naming every part.
void expect_rejected(const StepPlan& plan, const std::vector<std::string>& parts,
                     const ValidateOptions& options = {}) {
  SCOPED_TRACE("plan:\n" + plan.describe());
  test::expect_invalid([&] { validate(plan, options); }, parts);
}

// Two-stage prefill of sequences 0 (positions [0,4)) and 1 (positions [0,6)), one micro-batch
// each, with the standard programs.
StepPlan two_seq_prefill(int n_stages = 2) {
  return build_prefill_groups_plan(
      5, {{.seq = 0, .committed = 0, .n_tokens = 4}, {.seq = 1, .committed = 0, .n_tokens = 6}},
      PrefillPlanOptions{.n_stages = n_stages, .n_micro_batches = 2});
}

// One sequence prefilled in two chunks: m0 = [0,4), m1 = [4,8) (samples).
StepPlan chunked_prefill(int n_stages) {
  return build_prefill_chunks_plan(2, {{.seq = 0, .committed = 0, .n_tokens = 8}},
                                   PrefillPlanOptions{.n_stages = n_stages, .chunk_tokens = 4});
}

TEST(ValidatePlan, BuilderPlansPass) {
  const StepPlan plan = two_seq_prefill(3);
  validate(plan);
  plan.validate();
  plan.validate({.link_capacity = 1});
  chunked_prefill(4).validate();
  build_decode_plan(3, {{0, 5}, {1, 9}}, DecodePlanOptions{.n_stages = 2}).validate();
}

TEST(ValidatePlan, MessagesNameStepAndRule) {
  StepPlan plan = two_seq_prefill();
  plan.programs[1].pop_back();  // no commit
  expect_rejected(plan, {"step plan 5 is invalid (step dependency):", "stage 1", "commit"});
}

// ---- (a) pipelining one sequence across decode steps -----------------------------------------

TEST(ValidatePlan, RejectsMicroBatchOfNextStep) {
  // Decode step 5 of sequence 0 (committed 10) with its step-6 token pipelined behind it.
  StepPlan plan;
  plan.step = 5;
  plan.phase = Phase::kDecode;
  plan.n_stages = 2;
  plan.seqs = {{0, 10}};
  plan.micro_batches = {{.id = 0, .step = 5, .chunks = {{0, 10, 11, true}}},
                        {.id = 1, .step = 6, .chunks = {{0, 11, 12, true}}}};
  plan.programs = build_programs(2, plan.micro_batches);
  expect_rejected(plan, {"step dependency", "micro-batch 1", "step 6", "plan is for step 5"});
}

TEST(ValidatePlan, RejectsNextStepMicroBatchInPrefillToo) {
  StepPlan plan = two_seq_prefill();
  plan.micro_batches[1].step = 6;
  expect_rejected(plan, {"step dependency", "micro-batch 1", "step 6"});
}

TEST(ValidatePlan, RejectsSequenceTwiceInOneDecodeStep) {
  StepPlan plan;
  plan.step = 8;
  plan.phase = Phase::kDecode;
  plan.n_stages = 3;
  plan.seqs = {{0, 10}, {1, 4}};
  plan.micro_batches = {{.id = 0, .step = 8, .chunks = {{0, 10, 11, true}, {1, 4, 5, true}}},
                        {.id = 1, .step = 8, .chunks = {{0, 11, 12, true}}}};
  plan.programs = build_programs(3, plan.micro_batches);
  expect_rejected(plan, {"step dependency", "sequence 0", "micro-batch 0", "again in micro-batch 1",
                         "across decode steps"});
}

TEST(ValidatePlan, RejectsMultiTokenDecodeChunk) {
  StepPlan plan = build_decode_plan(4, {{0, 10}}, DecodePlanOptions{.n_stages = 2});
  plan.micro_batches[0].chunks[0].end = 12;
  expect_rejected(plan, {"step dependency", "2 tokens", "sequence 0", "micro-batch 0"});
}

TEST(ValidatePlan, RejectsDecodeChunkThatDoesNotSample) {
  StepPlan plan = build_decode_plan(4, {{0, 10}}, DecodePlanOptions{.n_stages = 2});
  plan.micro_batches[0].chunks[0].sample = false;
  expect_rejected(plan, {"sampling", "sequence 0", "micro-batch 0"});
}

// ---- (b) chunks of one sequence out of order on one stage ------------------------------------

TEST(ValidatePlan, RejectsReorderedChunksOnOneStage) {
  StepPlan plan = chunked_prefill(2);
  // Stage 1 receives both chunks in order but computes the later chunk first.
  plan.programs[1] = {recv(0), recv(1), compute(1), compute(0), sample(1), commit()};
  expect_rejected(plan, {"causal/KV order", "stage 1", "positions [4,8)", "sequence 0",
                         "micro-batch 1", "before its positions [0,4)"});
}

TEST(ValidatePlan, RejectsReorderedChunksOnSingleStage) {
  StepPlan plan = chunked_prefill(1);
  plan.programs[0] = {compute(1), sample(1), compute(0), commit()};
  expect_rejected(plan, {"causal/KV order", "stage 0", "sequence 0", "micro-batch 1"});
}

TEST(ValidatePlan, RejectsReorderedMicroBatchesEverywhere) {
  // Chunk order swapped in the micro-batch list itself: m0 = [4,8), m1 = [0,4).
  StepPlan plan = chunked_prefill(3);
  std::swap(plan.micro_batches[0].chunks, plan.micro_batches[1].chunks);
  plan.programs = build_programs(3, plan.micro_batches);
  expect_rejected(plan, {"causal/KV order", "stage 0", "sequence 0", "micro-batch 0"});
}

TEST(ValidatePlan, RejectsGapsOverlapsAndRewrites) {
  StepPlan gap = chunked_prefill(2);
  gap.micro_batches[1].chunks[0].begin = 5;
  expect_rejected(gap, {"causal/KV order", "sequence 0", "gap", "[4,5)"});

  StepPlan overlap = chunked_prefill(2);
  overlap.micro_batches[1].chunks[0].begin = 3;
  expect_rejected(overlap, {"causal/KV order", "sequence 0", "[3,4)", "twice"});

  StepPlan late = build_decode_plan(1, {{0, 10}}, DecodePlanOptions{.n_stages = 2});
  late.micro_batches[0].chunks[0] = {0, 11, 12, true};
  expect_rejected(late, {"causal/KV order", "committed KV length 10", "[10,11)"});

  StepPlan rewrite = build_decode_plan(1, {{0, 10}}, DecodePlanOptions{.n_stages = 2});
  rewrite.micro_batches[0].chunks[0] = {0, 9, 10, true};
  expect_rejected(rewrite, {"causal/KV order", "committed KV length 10", "recomputes"});

  StepPlan twice_in_mb = chunked_prefill(1);
  twice_in_mb.micro_batches[0].chunks.push_back(twice_in_mb.micro_batches[1].chunks[0]);
  twice_in_mb.micro_batches.pop_back();
  twice_in_mb.programs = build_programs(1, twice_in_mb.micro_batches);
  expect_rejected(twice_in_mb, {"causal/KV order", "two chunks of sequence 0"});
}

// ---- (c) skipping a stage --------------------------------------------------------------------

TEST(ValidatePlan, RejectsSkippedStage) {
  StepPlan plan = two_seq_prefill(3);
  // Stage 1 forgets micro-batch 1 entirely (stage 0 still sends it, stage 2 still receives it).
  plan.programs[1] = {recv(0), compute(0), send(0), commit()};
  expect_rejected(plan,
                  {"layer dependency", "stage 1", "never computes micro-batch 1", "sequence 1"});
}

TEST(ValidatePlan, RejectsComputeBeforeReceive) {
  StepPlan plan = two_seq_prefill(2);
  plan.programs[1] = {compute(0), recv(0), sample(0), recv(1), compute(1), sample(1), commit()};
  expect_rejected(plan, {"layer dependency", "stage 1", "micro-batch 0", "before receiving"});
}

TEST(ValidatePlan, RejectsSendBeforeCompute) {
  StepPlan plan = two_seq_prefill(2);
  plan.programs[0] = {send(0), compute(0), compute(1), send(1), commit()};
  expect_rejected(plan, {"layer dependency", "stage 0", "sends micro-batch 0", "before computing"});
}

TEST(ValidatePlan, RejectsComputedButNeverSent) {
  StepPlan plan = two_seq_prefill(2);
  plan.programs[0] = {compute(0), send(0), compute(1), commit()};
  expect_rejected(plan, {"layer dependency", "stage 0", "micro-batch 1", "never sends"});
}

TEST(ValidatePlan, RejectsDoubleCompute) {
  StepPlan plan = two_seq_prefill(1);
  plan.programs[0] = {compute(0), sample(0), compute(1), compute(1), sample(1), commit()};
  expect_rejected(plan, {"layer dependency", "stage 0", "micro-batch 1", "twice"});
}

// ---- (d) sends and receives that do not pair FIFO --------------------------------------------

TEST(ValidatePlan, RejectsSendReceiveMismatch) {
  StepPlan plan = two_seq_prefill(2);
  plan.programs[1] = {recv(1), compute(1), sample(1), recv(0), compute(0), sample(0), commit()};
  expect_rejected(plan, {"communication order", "link 0->1", "send #1", "micro-batch 0",
                         "receive #1", "expects micro-batch 1"});
}

TEST(ValidatePlan, RejectsDuplicateAndMisplacedTransfers) {
  StepPlan twice = two_seq_prefill(2);
  twice.programs[1] = {recv(0), recv(0),    compute(0), sample(0),
                       recv(1), compute(1), sample(1),  commit()};
  expect_rejected(twice, {"communication order", "stage 1", "receives micro-batch 0 twice"});

  StepPlan recv_on_first = two_seq_prefill(2);
  recv_on_first.programs[0].insert(recv_on_first.programs[0].begin(), recv(0));
  expect_rejected(recv_on_first, {"communication order", "stage 0", "no incoming link"});

  StepPlan send_on_last = two_seq_prefill(2);
  send_on_last.programs[1].insert(send_on_last.programs[1].end() - 1, send(1));
  expect_rejected(send_on_last, {"communication order", "last stage", "no outgoing link"});
}

// ---- (e) deadlock with bounded links ---------------------------------------------------------

TEST(ValidatePlan, RejectsDeadlockWithCapacityOne) {
  // Stage 0 sends m0 then m1; stage 1 waits for m1 first. With one slot m0 fills the link,
  // stage 0 blocks sending m1 and stage 1 waits for m1 forever.
  StepPlan plan = two_seq_prefill(2);
  plan.programs[1] = {recv(1), compute(1), sample(1), recv(0), compute(0), sample(0), commit()};
  expect_rejected(plan,
                  {"deadlock", "capacity 1", "stage 0 is blocked at instruction 3 send(m1)",
                   "link 0->1 is full (holds m0, capacity 1)",
                   "stage 1 is blocked at instruction 0 recv(m1)", "link 0->1 holds m0"},
                  {.link_capacity = 1});
}

TEST(ValidatePlan, RejectsReceiveBeforeTheSendIsPossible) {
  // Three micro-batches, double-buffered link: stage 1 first waits for m2, which stage 0 can
  // only send after m0 and m1 left the link.
  StepPlan plan = build_prefill_groups_plan(0,
                                            {{.seq = 0, .committed = 0, .n_tokens = 3},
                                             {.seq = 1, .committed = 0, .n_tokens = 3},
                                             {.seq = 2, .committed = 0, .n_tokens = 3}},
                                            PrefillPlanOptions{.n_stages = 3});
  plan.programs[1] = {recv(2), compute(2), send(2),    recv(0), compute(0),
                      send(0), recv(1),    compute(1), send(1), commit()};
  expect_rejected(plan, {"deadlock", "capacity 2", "stage 0 is blocked", "send(m2)",
                         "stage 1 is blocked at instruction 0 recv(m2)", "stage 2 is blocked"});
  // With room for all three it would not hang, but the link is FIFO: still rejected.
  expect_rejected(plan, {"communication order", "link 0->1"}, {.link_capacity = 3});
}

TEST(ValidatePlan, DeepPipelineWithCapacityOnePasses) {
  const StepPlan plan =
      build_prefill_chunks_plan(0, {{.seq = 4, .committed = 0, .n_tokens = 50}},
                                PrefillPlanOptions{.n_stages = 6, .chunk_tokens = 3});
  validate(plan, {.link_capacity = 1});
}

// ---- step dependency: the commit -------------------------------------------------------------

TEST(ValidatePlan, RejectsCommitProblems) {
  StepPlan early = two_seq_prefill(2);
  early.programs[0] = {compute(0), send(0), commit(), compute(1), send(1), commit()};
  expect_rejected(
      early, {"step dependency", "stage 0 commits at instruction 2", "runs compute(m1) after it"});

  StepPlan missing = two_seq_prefill(2);
  missing.programs[0].pop_back();
  expect_rejected(missing, {"step dependency", "stage 0", "does not end with commit"});

  StepPlan tagged = two_seq_prefill(2);
  tagged.programs[1].back().micro_batch = 1;
  expect_rejected(tagged, {"plan shape", "commit names micro-batch 1"});
}

// ---- sampling --------------------------------------------------------------------------------

TEST(ValidatePlan, RejectsSamplingProblems) {
  StepPlan on_first = two_seq_prefill(2);
  on_first.programs[0].insert(on_first.programs[0].begin() + 1, sample(0));
  expect_rejected(on_first, {"sampling", "stage 0", "sample(m0)", "only the last stage (1)"});

  StepPlan missing = two_seq_prefill(2);
  missing.programs[1] = {recv(0), compute(0), recv(1), compute(1), sample(1), commit()};
  expect_rejected(missing, {"sampling", "never samples micro-batch 0", "sequence 0", "position 3"});

  StepPlan before = two_seq_prefill(1);
  before.programs[0] = {sample(0), compute(0), compute(1), sample(1), commit()};
  expect_rejected(before, {"layer dependency", "samples micro-batch 0", "before computing"});

  StepPlan not_last = chunked_prefill(2);
  not_last.micro_batches[0].chunks[0].sample = true;
  expect_rejected(not_last, {"sampling", "sequence 0", "position 3", "only a sequence's last"});

  // Sampling a micro-batch with nothing to sample (to get its logits) is allowed.
  StepPlan extra = chunked_prefill(2);
  extra.programs[1] = {recv(0), compute(0), sample(0), recv(1), compute(1), sample(1), commit()};
  validate(extra);
}

// ---- shape -----------------------------------------------------------------------------------

TEST(ValidatePlan, RejectsMalformedPlans) {
  StepPlan programs = two_seq_prefill(2);
  programs.programs.pop_back();
  expect_rejected(programs, {"plan shape", "1 programs for 2 stages"});

  StepPlan unknown = two_seq_prefill(2);
  unknown.programs[0][0] = compute(7);
  expect_rejected(unknown, {"plan shape", "stage 0", "no micro-batch 7"});

  StepPlan dup = two_seq_prefill(2);
  dup.micro_batches[1].id = 0;
  expect_rejected(dup, {"plan shape", "micro-batch id 0 is used twice"});

  StepPlan unlisted = two_seq_prefill(2);
  unlisted.seqs.pop_back();
  expect_rejected(unlisted, {"plan shape", "sequence 1", "not listed in plan.seqs"});

  StepPlan idle = two_seq_prefill(2);
  idle.seqs.push_back({9, 0});
  expect_rejected(idle, {"plan shape", "sequence 9", "no micro-batch computes it"});

  StepPlan empty_chunk = two_seq_prefill(2);
  empty_chunk.micro_batches[0].chunks[0].end = 0;
  expect_rejected(empty_chunk, {"plan shape", "micro-batch 0", "[0,0)"});

  StepPlan no_chunks = two_seq_prefill(2);
  no_chunks.micro_batches[0].chunks.clear();
  expect_rejected(no_chunks, {"plan shape", "micro-batch 0 has no chunks"});

  StepPlan stages = two_seq_prefill(2);
  stages.n_stages = 0;
  stages.programs.clear();
  expect_rejected(stages, {"plan shape", "n_stages is 0"});

  StepPlan nothing = two_seq_prefill(2);
  nothing.micro_batches.clear();
  expect_rejected(nothing, {"plan shape", "no micro-batches"});

  expect_rejected(two_seq_prefill(2), {"link_capacity is 0"}, {.link_capacity = 0});
}

TEST(StepPlan, Describe) {
  const StepPlan plan = chunked_prefill(2);
  const std::string text = plan.describe();
  EXPECT_NE(text.find("step 2 prefill: 2 stages, 1 sequences, 2 micro-batches, 8 tokens"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("m1 (step 2, 4 tokens): seq 0 [4,8) sample"), std::string::npos) << text;
  EXPECT_NE(text.find("stage 0: compute(m0) send(m0) compute(m1) send(m1) commit"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("stage 1: recv(m0) compute(m0) recv(m1) compute(m1) sample(m1) commit"),
            std::string::npos)
      << text;
  EXPECT_EQ(to_string(Phase::kDecode), "decode");
  EXPECT_EQ(to_string(OpKind::kSend), "send");
  EXPECT_EQ(to_string(Instruction{OpKind::kRecv, 3}), "recv(m3)");
}

}  // namespace
}  // namespace conveyor
