// The messages of a pipeline that spans processes (src/dist/wire.hpp): what is encoded comes
// back equal, and malformed bytes are refused with an error instead of read out of bounds.
#include <gtest/gtest.h>

#include "common/test_util.hpp"
#include "dist/wire.hpp"

namespace conveyor {
namespace {

StepPlan sample_plan() {
  StepPlan plan;
  plan.step = 41;
  plan.phase = Phase::kDecode;
  plan.n_stages = 2;
  plan.cohort = 1;
  plan.seqs = {{.seq = 3, .committed = 17}, {.seq = 0, .committed = 5}};
  plan.micro_batches = {
      {.id = 0, .step = 41, .chunks = {{.seq = 3, .begin = 17, .end = 18, .sample = true}}},
      {.id = 1, .step = 41, .chunks = {{.seq = 0, .begin = 5, .end = 6, .sample = true}}}};
  plan.programs = {{{OpKind::kCompute, 0},
                    {OpKind::kSend, 0},
                    {OpKind::kCompute, 1},
                    {OpKind::kSend, 1},
                    {OpKind::kCommit, -1}},
                   {{OpKind::kRecv, 0},
                    {OpKind::kCompute, 0},
                    {OpKind::kSample, 0},
                    {OpKind::kRecv, 1},
                    {OpKind::kCompute, 1},
                    {OpKind::kSample, 1},
                    {OpKind::kCommit, -1}}};
  return plan;
}

TEST(Wire, SubmitRoundTripsThePlanAndTheSlotsItUses) {
  const StepPlan plan = sample_plan();
  std::vector<SamplingParams> sampling(5);
  sampling[3] = {.temperature = 0.7, .top_k = 40, .top_p = 0.9, .seed = 11};
  std::vector<LogitsCapture> logits(5, LogitsCapture::kNone);
  logits[0] = LogitsCapture::kAll;
  const StepContext ctx{.sampling = sampling, .logits = logits, .record_trace = true};
  const wire::Control c = wire::decode_control(wire::encode_submit(9, plan, ctx));
  ASSERT_EQ(c.kind, wire::ControlKind::kSubmit);
  EXPECT_EQ(c.submit.ticket, 9u);
  EXPECT_EQ(c.submit.plan, plan);
  EXPECT_TRUE(c.submit.ctx.record_trace);
  ASSERT_EQ(c.submit.sampling.size(), 4u);  // up to the highest slot of the plan
  EXPECT_EQ(c.submit.sampling[3].temperature, 0.7);
  EXPECT_EQ(c.submit.sampling[3].top_k, 40);
  EXPECT_EQ(c.submit.sampling[3].seed, 11u);
  EXPECT_EQ(c.submit.ctx.capture(0), LogitsCapture::kAll);
  EXPECT_EQ(c.submit.ctx.capture(3), LogitsCapture::kNone);
  EXPECT_TRUE(c.submit.ctx.tokens.empty());  // only stage 0 embeds, and it is the leader's
}

TEST(Wire, ControlMessagesRoundTrip) {
  wire::Control c = wire::decode_control(wire::encode_decide(77, false));
  EXPECT_EQ(c.kind, wire::ControlKind::kDecide);
  EXPECT_EQ(c.ticket, 77u);
  EXPECT_FALSE(c.commit);
  c = wire::decode_control(wire::encode_truncate(6, 123));
  EXPECT_EQ(c.kind, wire::ControlKind::kTruncate);
  EXPECT_EQ(c.seq, 6);
  EXPECT_EQ(c.length, 123);
  EXPECT_EQ(wire::decode_control(wire::encode_release(2)).seq, 2);
  EXPECT_EQ(wire::decode_control(wire::encode_signal(wire::ControlKind::kCancel)).kind,
            wire::ControlKind::kCancel);
  EXPECT_EQ(wire::decode_control(wire::encode_signal(wire::ControlKind::kReset)).kind,
            wire::ControlKind::kReset);
  EXPECT_EQ(wire::decode_control(wire::encode_signal(wire::ControlKind::kStop)).kind,
            wire::ControlKind::kStop);
}

TEST(Wire, ReportRoundTrips) {
  StepReport r;
  r.ticket = 5;
  r.step = 12;
  r.first_stage = 2;
  r.n_stages = 2;
  r.failures = {{.stage = 3, .code = ErrorCode::kTimeout, .message = "stage 3 failed at ..."}};
  r.result.emplace();
  r.result->tokens = {{.seq = 1, .position = 9, .token = 300}};
  r.result->logits = {{.seq = 1, .position = 9, .values = {0.5f, -1.25f, 3.0f}}};
  r.busy_ns = {100, 200};
  r.trace = {{.stage = 2, .kind = OpKind::kRecv, .micro_batch = 0, .step = 12, .start_us = 1.5}};
  r.links_cancelled = true;
  r.broken = "why";
  const StepReport back = wire::decode_report(wire::encode_report(r));
  EXPECT_EQ(back.ticket, 5u);
  EXPECT_EQ(back.first_stage, 2);
  ASSERT_EQ(back.failures.size(), 1u);
  EXPECT_EQ(back.failures[0].code, ErrorCode::kTimeout);
  EXPECT_EQ(back.failures[0].message, "stage 3 failed at ...");
  ASSERT_TRUE(back.result);
  EXPECT_EQ(back.result->tokens[0].token, 300);
  EXPECT_EQ(back.result->logits[0].values, (std::vector<float>{0.5f, -1.25f, 3.0f}));
  EXPECT_EQ(back.busy_ns, (std::vector<int64_t>{100, 200}));
  ASSERT_EQ(back.trace.size(), 1u);
  EXPECT_EQ(back.trace[0].kind, OpKind::kRecv);
  EXPECT_EQ(back.trace[0].start_us, 1.5);
  EXPECT_TRUE(back.links_cancelled);
  EXPECT_EQ(back.broken, "why");
}

// Every truncation of a valid message and a few corruptions: an Error, never a crash.
TEST(Wire, MalformedMessagesAreRefused) {
  const std::vector<SamplingParams> sampling(4);
  const std::vector<std::byte> submit =
      wire::encode_submit(1, sample_plan(), StepContext{.sampling = sampling});
  for (size_t n = 0; n < submit.size(); ++n) {
    EXPECT_THROW(wire::decode_control(std::span(submit).first(n)), Error) << n << " bytes";
  }
  std::vector<std::byte> extra = submit;
  extra.push_back(std::byte{0});
  test::expect_error([&] { wire::decode_control(extra); }, ErrorCode::kCommunication,
                     {"1 bytes left over"});
  std::vector<std::byte> bad_kind = wire::encode_signal(wire::ControlKind::kStop);
  bad_kind[0] = std::byte{200};
  test::expect_error([&] { wire::decode_control(bad_kind); }, ErrorCode::kCommunication,
                     {"enum value 200"});
  // A count that promises more elements than the message holds.
  std::vector<std::byte> huge = submit;
  const size_t seqs_count = 1 + 8 + 8 + 1 + 4 + 4;  // kind, ticket, step, phase, stages, cohort
  for (size_t i = 0; i < 8; ++i)
    huge[seqs_count + i] = std::byte{0xff};
  test::expect_error([&] { wire::decode_control(huge); }, ErrorCode::kCommunication,
                     {"does not fit"});
  StepReport r;
  r.n_stages = 1;
  r.failures = {{.stage = 0, .message = "x"}};
  const std::vector<std::byte> report = wire::encode_report(r);
  for (size_t n = 0; n < report.size(); ++n) {
    EXPECT_THROW(wire::decode_report(std::span(report).first(n)), Error) << n << " bytes";
  }
  r.failures[0].stage = 5;  // outside the reporting process' stages
  test::expect_error([&] { wire::decode_report(wire::encode_report(r)); },
                     ErrorCode::kCommunication, {"a failure of stage 5"});
}

}  // namespace
}  // namespace conveyor
