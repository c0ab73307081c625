// Tests of the simulator: exact GPipe timings with known unit times, bounded links, the
// validator in front, predicted traces through observe/, and whole generations.
#include <gtest/gtest.h>

#include <set>

#include <algorithm>
#include <string>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/observe.hpp"
#include "conveyor/simulator.hpp"
#include "model/make_model.hpp"
#include "plan/plan_builders.hpp"

namespace conveyor {
namespace {

// A device whose layer takes 1 us per token in prefill (nothing else costs anything), so every
// prediction can be written down by hand.
DeviceSpec unit_device(double head_s = 0.0, double link_latency_s = 0.0,
                       double per_token_s = 1e-6) {
  DeviceSpec d = device_preset("cpu");
  Profile p;
  p.model_shape = model_shape_key(preset_config("tiny"));
  p.layer_prefill = {.base_s = 0.0, .per_token_s = per_token_s, .per_pair_s = 0.0};
  p.layer_decode = {.base_s = 10e-6, .per_token_s = 0.0, .per_pair_s = 0.0};
  p.head_prefill = {.base_s = head_s, .per_token_s = 0.0, .per_pair_s = 0.0};
  p.head_decode = {.base_s = head_s, .per_token_s = 0.0, .per_pair_s = 0.0};
  p.link_latency_s = link_latency_s;
  d.profile = p;
  return d;
}

std::vector<PrefillSeq> seqs_of(int n, int64_t tokens) {
  std::vector<PrefillSeq> seqs;
  for (int i = 0; i < n; ++i)
    seqs.push_back({i, 0, tokens, true});
  return seqs;
}

TEST(Simulator, GPipeTimingWithEqualStages) {
  const CostModel model(preset_config("tiny"));  // 4 layers
  const Partition partition = Partition::even(4, 4);
  SimulatorOptions options{.topology = {.devices = {unit_device()}}};
  for (int M : {1, 2, 4, 8}) {
    const StepPlan plan = build_prefill_plan(
        0, seqs_of(M, 100), PrefillPlanOptions{.n_stages = 4, .n_micro_batches = M});
    const SimulatedStep sim = simulate_step(plan, partition, model, options);
    // Each micro-batch takes 100 us per stage: (M + S - 1) slots.
    EXPECT_NEAR(sim.seconds, (M + 3) * 100e-6, 1e-12) << "M=" << M;
    for (double busy : sim.busy_s)
      EXPECT_NEAR(busy, M * 100e-6, 1e-12);
    // observe/ works on predictions: the bubble equals the ideal (S-1)/(M+S-1).
    validate_trace(sim.trace, 4);
    const BalanceReport report = balance_report(sim.trace, 4, M);
    EXPECT_NEAR(report.bubble_fraction, report.ideal_bubble_fraction, 1e-9);
    EXPECT_NEAR(report.imbalance, 1.0, 1e-9);
    EXPECT_FALSE(timeline_svg(sim.trace, 4).empty());
    EXPECT_EQ(sim.trace.size(), [&] {
      size_t n = 0;
      for (const auto& program : plan.programs)
        n += program.size();
      return n;
    }());
  }
}

TEST(Simulator, SlowestStageSetsThePaceAndHeadCounts) {
  const CostModel model(preset_config("tiny"));
  // Stage 1 has 3 layers: 300 us per micro-batch; the head adds 50 us per sampled micro-batch.
  const Partition partition = Partition::from_counts(4, {1, 3});
  SimulatorOptions options{.topology = {.devices = {unit_device(50e-6)}}};
  const int M = 4;
  const StepPlan plan = build_prefill_plan(0, seqs_of(M, 100),
                                           PrefillPlanOptions{.n_stages = 2, .n_micro_batches = M});
  const SimulatedStep sim = simulate_step(plan, partition, model, options);
  EXPECT_NEAR(sim.seconds, 100e-6 + M * 350e-6, 1e-12);
  EXPECT_NEAR(sim.busy_s[0], M * 100e-6, 1e-12);
  EXPECT_NEAR(sim.busy_s[1], M * 350e-6, 1e-12);
}

TEST(Simulator, BoundedLinksBlockTheSender) {
  const CostModel model(preset_config("tiny"));
  const Partition partition = Partition::from_counts(4, {1, 3});
  const int M = 6;
  const StepPlan plan = build_prefill_plan(0, seqs_of(M, 100),
                                           PrefillPlanOptions{.n_stages = 2, .n_micro_batches = M});
  auto last_send_end = [&](int capacity) {
    SimulatorOptions options{.topology = {.devices = {unit_device()}}, .link_capacity = capacity};
    const SimulatedStep sim = simulate_step(plan, partition, model, options);
    double end = 0.0;
    for (const TraceEvent& e : sim.trace) {
      if (e.stage == 0 && e.kind == OpKind::kSend) end = std::max(end, e.end_us);
    }
    return std::pair{end, sim.seconds};
  };
  const auto [end1, total1] = last_send_end(1);
  const auto [end2, total2] = last_send_end(2);
  const auto [end8, total8] = last_send_end(8);
  // Unbounded: stage 0 finishes at 6 x 100 us. Bounded: it waits for stage 1 to take messages.
  EXPECT_NEAR(end8, 600.0, 1e-9);
  EXPECT_GT(end2, end8);
  EXPECT_GT(end1, end2);
  // The downstream stage is the bottleneck, so the step time does not change.
  EXPECT_NEAR(total1, total8, 1e-12);
  EXPECT_NEAR(total2, total8, 1e-12);
}

TEST(Simulator, SharedHostCoresSlowConcurrentStages) {
  const CostModel model(preset_config("tiny"));
  const Partition partition = Partition::even(4, 2);
  const int M = 4;
  const StepPlan plan = build_prefill_plan(0, seqs_of(M, 50),
                                           PrefillPlanOptions{.n_stages = 2, .n_micro_batches = M});
  // 2 layers x 50 tokens = 100 us per micro-batch and stage.
  SimulatorOptions own{.topology = {.devices = {unit_device()}}, .host_cores = 0.0};
  EXPECT_NEAR(simulate_step(plan, partition, model, own).seconds, (M + 1) * 100e-6, 1e-12);
  // One shared core: the 2 x M x 100 us of work run back to back.
  SimulatorOptions one{.topology = {.devices = {unit_device()}}, .host_cores = 1.0};
  const SimulatedStep shared = simulate_step(plan, partition, model, one);
  EXPECT_NEAR(shared.seconds, 2 * M * 100e-6, 1e-9);
  validate_trace(shared.trace, 2);
  // Two cores for two stages: as if each had its own.
  SimulatorOptions two{.topology = {.devices = {unit_device()}}, .host_cores = 2.0};
  EXPECT_NEAR(simulate_step(plan, partition, model, two).seconds, (M + 1) * 100e-6, 1e-12);
  // The default takes the profile's measured value.
  DeviceSpec measured = unit_device();
  measured.profile->host_cores = 1.0;
  SimulatorOptions from_profile{.topology = {.devices = {measured}}};
  EXPECT_NEAR(simulate_step(plan, partition, model, from_profile).seconds, 2 * M * 100e-6, 1e-9);
}

TEST(Simulator, LinkLatencyDelaysTheReceiver) {
  const CostModel model(preset_config("tiny"));
  const Partition partition = Partition::even(4, 2);
  SimulatorOptions options{.topology = {.devices = {unit_device(0.0, 40e-6)}}};
  const StepPlan plan = build_prefill_plan(0, seqs_of(1, 100), PrefillPlanOptions{.n_stages = 2});
  const SimulatedStep sim = simulate_step(plan, partition, model, options);
  EXPECT_NEAR(sim.seconds, 200e-6 + 200e-6 + 40e-6, 1e-12);

  // Without a profile the link spec's latency and bandwidth apply.
  DeviceSpec rates = device_preset("h100");
  SimulatorOptions with_link{
      .topology = {.devices = {rates}, .links = {LinkSpec{"slow", 1e9, 1e-3}}}};
  const SimulatedStep slow = simulate_step(plan, partition, model, with_link);
  SimulatorOptions fast_link{.topology = {.devices = {rates}, .links = {link_preset("nvlink")}}};
  const SimulatedStep fast = simulate_step(plan, partition, model, fast_link);
  const double bytes =
      static_cast<double>(model.activation_bytes(Workload::prefill({.tokens_per_seq = 100})));
  EXPECT_NEAR(slow.seconds - fast.seconds,
              (1e-3 + bytes / 1e9) - link_preset("nvlink").seconds(static_cast<int64_t>(bytes)),
              1e-9);
}

TEST(Simulator, ValidatesThePlanFirst) {
  const CostModel model(preset_config("tiny"));
  SimulatorOptions options{.topology = {.devices = {unit_device()}}};
  StepPlan plan = build_prefill_plan(0, seqs_of(2, 10), PrefillPlanOptions{.n_stages = 2});
  plan.programs[1].pop_back();  // drop the last stage's Commit
  try {
    simulate_step(plan, Partition::even(4, 2), model, options);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("step dependency"), std::string::npos) << e.what();
  }
  const StepPlan ok = build_prefill_plan(0, seqs_of(2, 10), PrefillPlanOptions{.n_stages = 2});
  EXPECT_THROW(simulate_step(ok, Partition::even(4, 4), model, options), Error);
  SimulatorOptions two_devices{
      .topology = {.devices = {unit_device(), unit_device(), unit_device()}}};
  EXPECT_THROW(simulate_step(ok, Partition::even(4, 2), model, two_devices), Error);
}

TEST(Simulator, ChunkedPrefillAndGeneration) {
  const CostModel model(preset_config("tiny"));
  const Partition partition = Partition::even(4, 2);
  SimulatorOptions options{.topology = {.devices = {unit_device()}}};
  // One 512-token prompt in 4 chunks pipelines across 2 stages: 5 slots of 2 x 128 us.
  GenerationShape shape{.n_seqs = 1,
                        .prompt_tokens = 512,
                        .new_tokens = 5,
                        .policy = {.chunking = Chunking::fixed(128)}};
  const SimulatedGeneration gen = simulate_generation(shape, partition, model, options);
  EXPECT_EQ(gen.prefill_micro_batches, 4);
  EXPECT_NEAR(gen.prefill_seconds, 5 * 256e-6, 1e-12);
  // 4 decode steps of one micro-batch each: 2 stages x 2 layers x 10 us.
  EXPECT_EQ(gen.step_seconds.size(), 5u);
  EXPECT_NEAR(gen.decode_seconds, 4 * 40e-6, 1e-12);
  EXPECT_EQ(gen.decode_micro_batches, 1);
  validate_trace(gen.trace, 2);
  // Steps are laid back to back on one time axis.
  for (size_t i = 1; i < gen.trace.size(); ++i) {
    if (gen.trace[i].step > gen.trace[i - 1].step) {
      EXPECT_GE(gen.trace[i].start_us, gen.trace[i - 1].end_us - 1e-9);
    }
  }
  EXPECT_GT(balance_report_for_phase(gen.trace, 2, 1, Phase::kDecode).span_us, 0.0);
}

// Two cohorts on two stages keep both stages busy during decode: with equal stages a cohort step
// completes every stage-time, where a strict step of two micro-batches takes three.
TEST(Simulator, CohortDecodeOverlapsTheStages) {
  const CostModel model(preset_config("tiny"));
  const Partition partition = Partition::even(4, 2);
  SimulatorOptions options{.topology = {.devices = {unit_device()}}};
  GenerationShape shape{.n_seqs = 8, .prompt_tokens = 16, .new_tokens = 33};
  const SimulatedGeneration strict = simulate_generation(shape, partition, model, options);
  shape.policy.decode_mode = DecodeMode::kCohorts;
  const SimulatedGeneration cohorts = simulate_generation(shape, partition, model, options);
  auto end_of = [](const Trace& t) {
    double end = 0.0;
    for (const TraceEvent& e : t)
      end = std::max(end, e.end_us);
    return end;
  };
  // Strict: one prefill of two 64-token micro-batches (3 slots of 128 us), then 32 decode
  // steps of 3 slots of 2 layers x 10 us.
  EXPECT_NEAR(strict.decode_seconds, 32 * 60e-6, 1e-12);
  EXPECT_EQ(strict.decode_micro_batches, 2);
  EXPECT_NEAR(end_of(strict.trace), 384 + 32 * 60, 1e-6);
  // Cohorts: cohort 0's prefill ends at 192 us, cohort 1's at 320 us; from then on a cohort's
  // one-micro-batch step ends every 20 us: 64 decode steps, the last at 340 + 63 x 20 us.
  EXPECT_EQ(cohorts.decode_micro_batches, 1);
  EXPECT_NEAR(end_of(cohorts.trace), 340 + 63 * 20, 1e-6);
  EXPECT_NEAR(cohorts.decode_seconds, (340 + 63 * 20 - 192) * 1e-6, 1e-12);
  EXPECT_LT(end_of(cohorts.trace), 0.7 * end_of(strict.trace));
  // The schedule validated; some step was submitted while another cohort's was in flight.
  int in_flight = 0, most = 0;
  for (const ScheduleEvent& e : cohorts.schedule.events) {
    in_flight += e.kind == ScheduleEvent::Kind::kSubmit ? 1 : -1;
    most = std::max(most, in_flight);
  }
  EXPECT_EQ(most, 2);
  std::set<int32_t> seen;
  for (const StepPlan& p : cohorts.schedule.plans)
    seen.insert(p.cohort);
  EXPECT_EQ(seen, (std::set<int32_t>{0, 1}));
  EXPECT_GT(balance_report_for_phase(strict.trace, 2, 2, Phase::kDecode).bubble_fraction,
            balance_report_for_phase(cohorts.trace, 2, 1, Phase::kDecode).bubble_fraction + 0.15);
}

TEST(Simulator, RooflineDecodeStepOnH100) {
  // Without a profile: 8 sequences in 4 micro-batches over 4 stages of an 8B-like shape.
  ModelConfig config = preset_config("small");
  const CostModel model(config);
  const Partition partition = Partition::even(12, 4);
  SimulatorOptions options{
      .topology = {.devices = {device_preset("h100")}, .links = {link_preset("nvlink")}}};
  std::vector<SeqState> seqs;
  for (int32_t i = 0; i < 8; ++i)
    seqs.push_back({i, 100});
  const StepPlan plan = build_decode_plan(1, seqs, DecodePlanOptions{.n_stages = 4});
  const SimulatedStep sim = simulate_step(plan, partition, model, options);
  EXPECT_EQ(plan.micro_batches.size(), 4u);
  // At least the slowest stage times (M + S - 1), at most the sum of everything sequentially.
  double max_busy = 0.0, sum_busy = 0.0;
  for (double b : sim.busy_s) {
    max_busy = std::max(max_busy, b);
    sum_busy += b;
  }
  EXPECT_GE(sim.seconds, max_busy);
  EXPECT_LE(sim.seconds, sum_busy + 1e-3);
  EXPECT_GT(sim.busy_s[3], sim.busy_s[1]);  // the head
}

}  // namespace
}  // namespace conveyor
