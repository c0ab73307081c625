// Tests of the plan builders: grouping balance, chunk tiling, program shape, and that every
// builder output validates over a sweep of stages, micro-batch counts and chunk sizes.
#include <gtest/gtest.h>

#include "common/test_util.hpp"

#include <algorithm>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/step_plan.hpp"
#include "plan/plan_builders.hpp"

namespace conveyor {
namespace {

using test::expect_invalid;

std::vector<PrefillSeq> prefill_seqs(const std::vector<int64_t>& lengths, int64_t committed = 0) {
  std::vector<PrefillSeq> seqs;
  for (size_t i = 0; i < lengths.size(); ++i) {
    seqs.push_back(PrefillSeq{.seq = static_cast<int32_t>(i * 2 + 1),  // non-dense slot ids
                              .committed = committed + static_cast<int64_t>(i),
                              .n_tokens = lengths[i]});
  }
  return seqs;
}

// Chunks of each sequence, in micro-batch order.
std::map<int32_t, std::vector<SeqChunk>> chunks_by_seq(const StepPlan& plan) {
  std::map<int32_t, std::vector<SeqChunk>> out;
  for (const MicroBatch& mb : plan.micro_batches) {
    for (const SeqChunk& c : mb.chunks)
      out[c.seq].push_back(c);
  }
  return out;
}

// The standard program shape: per micro-batch Recv/Compute/Send-or-Sample, then Commit.
void expect_standard_programs(const StepPlan& plan, bool sample_every) {
  ASSERT_EQ(plan.programs.size(), static_cast<size_t>(plan.n_stages));
  for (int s = 0; s < plan.n_stages; ++s) {
    std::vector<Instruction> expected;
    for (const MicroBatch& mb : plan.micro_batches) {
      if (s > 0) expected.push_back({OpKind::kRecv, mb.id});
      expected.push_back({OpKind::kCompute, mb.id});
      if (s + 1 < plan.n_stages) {
        expected.push_back({OpKind::kSend, mb.id});
      } else if (sample_every || mb.has_sample()) {
        expected.push_back({OpKind::kSample, mb.id});
      }
    }
    expected.push_back({OpKind::kCommit, -1});
    EXPECT_EQ(plan.programs[static_cast<size_t>(s)], expected) << "stage " << s;
  }
}

TEST(PlanOptions, Validate) {
  PrefillPlanOptions{}.validate();
  DecodePlanOptions{}.validate();
  expect_invalid([] { DecodePlanOptions{.n_stages = -1}.validate(); },
                 {"DecodePlanOptions::n_stages", "-1"});
  expect_invalid([] { DecodePlanOptions{.n_stages = 1, .n_micro_batches = -2}.validate(); },
                 {"DecodePlanOptions::n_micro_batches", "-2"});
  expect_invalid([] { PrefillPlanOptions{.n_stages = 0}.validate(); }, {"n_stages", "0"});
  expect_invalid([] { PrefillPlanOptions{.n_stages = 2, .n_micro_batches = -1}.validate(); },
                 {"n_micro_batches", "-1"});
  expect_invalid([] { PrefillPlanOptions{.n_stages = 2, .chunk_tokens = -4}.validate(); },
                 {"chunk_tokens", "-4"});
}

TEST(BalanceGroups, CoversEveryItemOnceInNonEmptyGroups) {
  const std::vector<int64_t> weights = {8, 7, 6, 5, 4, 30, 1, 1, 2};
  for (int n_groups = 1; n_groups <= 12; ++n_groups) {
    const auto groups = balance_groups(weights, n_groups);
    ASSERT_EQ(groups.size(), std::min<size_t>(n_groups, weights.size()));
    std::vector<int> hits(weights.size(), 0);
    for (const auto& g : groups) {
      ASSERT_FALSE(g.empty());
      EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));
      for (size_t i : g)
        ++hits[i];
    }
    EXPECT_EQ(hits, std::vector<int>(weights.size(), 1));
    for (size_t g = 1; g < groups.size(); ++g)
      EXPECT_LT(groups[g - 1][0], groups[g][0]);
  }
}

TEST(BalanceGroups, Balances) {
  auto loads = [](const std::vector<int64_t>& w, const std::vector<std::vector<size_t>>& groups) {
    std::vector<int64_t> out;
    for (const auto& g : groups) {
      int64_t sum = 0;
      for (size_t i : g)
        sum += w[i];
      out.push_back(sum);
    }
    return out;
  };
  const std::vector<int64_t> equal = {5, 5, 5, 5};
  EXPECT_EQ(loads(equal, balance_groups(equal, 2)), (std::vector<int64_t>{10, 10}));
  const std::vector<int64_t> w = {3, 3, 2, 2, 2};  // optimum 6/6
  const auto l = loads(w, balance_groups(w, 2));
  EXPECT_EQ(std::accumulate(l.begin(), l.end(), int64_t{0}), 12);
  EXPECT_LE(*std::max_element(l.begin(), l.end()), 7);
  // One huge item: the others share the remaining groups.
  const std::vector<int64_t> skew = {100, 1, 1, 1, 1};
  const auto groups = balance_groups(skew, 2);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0], (std::vector<size_t>{0}));
  EXPECT_EQ(groups[1], (std::vector<size_t>{1, 2, 3, 4}));
  // Greedy bound: max - min load <= the largest weight.
  const std::vector<int64_t> mixed = {17, 3, 9, 12, 1, 1, 25, 8, 4, 6, 6, 2};
  for (int g = 1; g <= 6; ++g) {
    const auto lm = loads(mixed, balance_groups(mixed, g));
    EXPECT_LE(*std::max_element(lm.begin(), lm.end()) - *std::min_element(lm.begin(), lm.end()),
              25);
  }
  // Zero weights still leave no group empty.
  EXPECT_EQ(balance_groups({0, 0, 0}, 3).size(), 3u);
  expect_invalid([] { balance_groups({1, 2}, 0); }, {"0 groups"});
}

TEST(ChunkSizes, NearEqualAtMostChunk) {
  EXPECT_EQ(chunk_sizes(10, 4), (std::vector<int64_t>{4, 3, 3}));
  EXPECT_EQ(chunk_sizes(8, 4), (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(chunk_sizes(9, 4), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(chunk_sizes(1, 4), (std::vector<int64_t>{1}));
  EXPECT_EQ(chunk_sizes(3, 1), (std::vector<int64_t>{1, 1, 1}));
  EXPECT_TRUE(chunk_sizes(0, 4).empty());
  for (int64_t n = 1; n < 60; ++n) {
    for (int64_t c = 1; c < 20; ++c) {
      const auto sizes = chunk_sizes(n, c);
      EXPECT_EQ(static_cast<int64_t>(sizes.size()), (n + c - 1) / c);
      EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), int64_t{0}), n);
      EXPECT_LE(*std::max_element(sizes.begin(), sizes.end()), c);
      EXPECT_LE(*std::max_element(sizes.begin(), sizes.end()) -
                    *std::min_element(sizes.begin(), sizes.end()),
                1);
    }
  }
  expect_invalid([] { chunk_sizes(5, 0); }, {"chunk_tokens >= 1"});
}

TEST(PrefillGroups, DefaultOneMicroBatchPerStage) {
  const auto seqs = prefill_seqs({10, 20, 30, 40, 50, 60});
  const StepPlan plan = build_prefill_groups_plan(7, seqs, PrefillPlanOptions{.n_stages = 3});
  plan.validate();
  EXPECT_EQ(plan.step, 7);
  EXPECT_EQ(plan.phase, Phase::kPrefill);
  EXPECT_EQ(plan.n_stages, 3);
  ASSERT_EQ(plan.micro_batches.size(), 3u);  // M defaults to S
  EXPECT_EQ(plan.n_tokens(), 210);
  for (const MicroBatch& mb : plan.micro_batches) {
    EXPECT_EQ(mb.step, 7);
    EXPECT_EQ(mb.n_tokens(), 70);  // 60+10, 50+20, 40+30
  }
  // Every sequence whole, sampling, starting at its committed length.
  ASSERT_EQ(plan.seqs.size(), seqs.size());
  const auto by_seq = chunks_by_seq(plan);
  for (const PrefillSeq& s : seqs) {
    ASSERT_EQ(by_seq.at(s.seq).size(), 1u);
    const SeqChunk& c = by_seq.at(s.seq)[0];
    EXPECT_EQ(c.begin, s.committed);
    EXPECT_EQ(c.end, s.committed + s.n_tokens);
    EXPECT_TRUE(c.sample);
  }
  expect_standard_programs(plan, false);
}

TEST(PrefillGroups, ClampsToSequencesAndKeepsInputOrder) {
  const auto seqs = prefill_seqs({5, 9});
  const StepPlan plan =
      build_prefill_groups_plan(0, seqs, PrefillPlanOptions{.n_stages = 4, .n_micro_batches = 8});
  plan.validate();
  ASSERT_EQ(plan.micro_batches.size(), 2u);
  EXPECT_EQ(plan.micro_batches[0].chunks[0].seq, seqs[0].seq);
  EXPECT_EQ(plan.micro_batches[1].chunks[0].seq, seqs[1].seq);
  const StepPlan one =
      build_prefill_groups_plan(0, seqs, PrefillPlanOptions{.n_stages = 4, .n_micro_batches = 1});
  ASSERT_EQ(one.micro_batches.size(), 1u);
  ASSERT_EQ(one.micro_batches[0].chunks.size(), 2u);
  EXPECT_EQ(one.micro_batches[0].chunks[0].seq, seqs[0].seq);  // input order inside a group
}

TEST(PrefillGroups, SampleFlagFollowsRequest) {
  std::vector<PrefillSeq> seqs = prefill_seqs({4, 4});
  seqs[1].sample = false;  // its prompt continues next step
  const StepPlan plan = build_prefill_plan(0, seqs, PrefillPlanOptions{.n_stages = 2});
  plan.validate();
  EXPECT_TRUE(plan.micro_batches[0].chunks[0].sample);
  EXPECT_FALSE(plan.micro_batches[1].chunks[0].sample);
  // No Sample for the micro-batch with nothing to sample, unless asked for.
  EXPECT_EQ(plan.programs[1].size(), 2u * 3u + 1u - 1u);
  const StepPlan every = build_prefill_plan(
      0, seqs, PrefillPlanOptions{.n_stages = 2, .sample_rule = SampleRule::kEveryMicroBatch});
  every.validate();
  expect_standard_programs(every, true);
}

TEST(PrefillChunks, OneLongPromptFillsThePipeline) {
  const std::vector<PrefillSeq> seqs = {{.seq = 0, .committed = 0, .n_tokens = 100}};
  const StepPlan plan =
      build_prefill_chunks_plan(3, seqs, PrefillPlanOptions{.n_stages = 4, .chunk_tokens = 16});
  plan.validate();
  ASSERT_EQ(plan.micro_batches.size(), 7u);  // ceil(100 / 16)
  int64_t pos = 0;
  for (size_t k = 0; k < plan.micro_batches.size(); ++k) {
    const MicroBatch& mb = plan.micro_batches[k];
    EXPECT_EQ(mb.id, static_cast<int32_t>(k));
    ASSERT_EQ(mb.chunks.size(), 1u);
    EXPECT_EQ(mb.chunks[0].begin, pos);
    EXPECT_LE(mb.chunks[0].n_tokens(), 16);
    EXPECT_GE(mb.chunks[0].n_tokens(), 14);
    EXPECT_EQ(mb.chunks[0].sample, k + 1 == plan.micro_batches.size());
    pos = mb.chunks[0].end;
  }
  EXPECT_EQ(pos, 100);
  expect_standard_programs(plan, false);
}

TEST(PrefillChunks, RoundMajorOverGroups) {
  // Two groups (M = 2): {seq 1: 10 tokens}, {seq 3: 4 tokens, seq 5: 5 tokens}, chunks of 4.
  const auto seqs = prefill_seqs({10, 4, 5}, 100);
  const StepPlan plan = build_prefill_chunks_plan(
      1, seqs, PrefillPlanOptions{.n_stages = 2, .n_micro_batches = 2, .chunk_tokens = 4});
  plan.validate();
  // Round 0: g0 {1:[100,104)}, g1 {3:[101,105), 5:[102,105)}; round 1: g0 {1:[104,107)},
  // g1 {5:[105,107)}; round 2: g0 {1:[107,110)}.
  ASSERT_EQ(plan.micro_batches.size(), 5u);
  const std::vector<std::vector<SeqChunk>> expected = {
      {{1, 100, 104, false}}, {{3, 101, 105, true}, {5, 102, 105, false}},
      {{1, 104, 107, false}}, {{5, 105, 107, true}},
      {{1, 107, 110, true}},
  };
  for (size_t k = 0; k < expected.size(); ++k) {
    EXPECT_EQ(plan.micro_batches[k].chunks, expected[k]) << "micro-batch " << k;
  }
}

TEST(PrefillChunks, NeedsChunkTokens) {
  expect_invalid(
      [] { build_prefill_chunks_plan(0, prefill_seqs({4}), PrefillPlanOptions{.n_stages = 2}); },
      {"chunk_tokens >= 1", "build_prefill_groups_plan"});
}

TEST(PrefillChunks, ChunksTileEachSequence) {
  const std::vector<int64_t> lengths = {1, 17, 64, 3, 33, 8, 100};
  for (int64_t chunk : {1, 5, 16, 64, 1000}) {
    const StepPlan plan = build_prefill_chunks_plan(
        0, prefill_seqs(lengths, 7), PrefillPlanOptions{.n_stages = 3, .chunk_tokens = chunk});
    plan.validate();
    const auto by_seq = chunks_by_seq(plan);
    for (const PrefillSeq& s : prefill_seqs(lengths, 7)) {
      const std::vector<SeqChunk>& chunks = by_seq.at(s.seq);
      EXPECT_EQ(static_cast<int64_t>(chunks.size()), (s.n_tokens + chunk - 1) / chunk);
      int64_t pos = s.committed;
      for (size_t k = 0; k < chunks.size(); ++k) {
        EXPECT_EQ(chunks[k].begin, pos);
        EXPECT_LE(chunks[k].n_tokens(), chunk);
        EXPECT_EQ(chunks[k].sample, k + 1 == chunks.size());
        pos = chunks[k].end;
      }
      EXPECT_EQ(pos, s.committed + s.n_tokens);
    }
  }
}

TEST(Decode, DefaultGroupsAndPositions) {
  const std::vector<SeqState> seqs = {{0, 12}, {3, 40}, {4, 7}, {6, 9}, {7, 100}};
  const StepPlan plan = build_decode_plan(9, seqs, DecodePlanOptions{.n_stages = 2});
  plan.validate();
  EXPECT_EQ(plan.phase, Phase::kDecode);
  EXPECT_EQ(plan.seqs, seqs);
  ASSERT_EQ(plan.micro_batches.size(), 2u);  // min(S, n)
  EXPECT_EQ(plan.micro_batches[0].chunks.size(), 3u);
  EXPECT_EQ(plan.micro_batches[1].chunks.size(), 2u);
  size_t i = 0;
  for (const MicroBatch& mb : plan.micro_batches) {
    for (const SeqChunk& c : mb.chunks) {
      EXPECT_EQ(c, (SeqChunk{seqs[i].seq, seqs[i].committed, seqs[i].committed + 1, true}));
      ++i;
    }
  }
  expect_standard_programs(plan, false);
  // Fewer sequences than stages: one micro-batch per sequence.
  const StepPlan few = build_decode_plan(9, {{2, 5}}, DecodePlanOptions{.n_stages = 4});
  few.validate();
  EXPECT_EQ(few.micro_batches.size(), 1u);
  // Explicit M.
  const StepPlan four =
      build_decode_plan(9, seqs, DecodePlanOptions{.n_stages = 2, .n_micro_batches = 4});
  four.validate();
  EXPECT_EQ(four.micro_batches.size(), 4u);
}

TEST(Builders, InputErrors) {
  const PrefillPlanOptions o{.n_stages = 2};
  const DecodePlanOptions d{.n_stages = 2};
  expect_invalid([&] { build_prefill_plan(0, {}, o); }, {"prefill", "at least one sequence"});
  expect_invalid([&] { build_decode_plan(0, {}, d); }, {"decode", "at least one sequence"});
  expect_invalid(
      [&] {
        build_prefill_plan(
            0,
            {{.seq = 1, .committed = 0, .n_tokens = 3}, {.seq = 1, .committed = 0, .n_tokens = 2}},
            o);
      },
      {"sequence 1", "twice"});
  expect_invalid([&] { build_prefill_plan(0, {{.seq = 1, .committed = 0, .n_tokens = 0}}, o); },
                 {"sequence 1", "0 new tokens"});
  expect_invalid([&] { build_prefill_plan(0, {{.seq = 1, .committed = -2, .n_tokens = 3}}, o); },
                 {"sequence 1", "-2"});
  expect_invalid([&] { build_prefill_plan(0, {{.seq = -1, .committed = 0, .n_tokens = 3}}, o); },
                 {"sequence id -1"});
  expect_invalid([&] { build_decode_plan(0, {{0, 3}, {0, 4}}, d); }, {"sequence 0", "twice"});
  expect_invalid([&] { build_decode_plan(0, {{0, -3}}, d); }, {"sequence 0", "-3"});
  expect_invalid(
      [&] {
        build_decode_plan(0, {{0, 3}}, DecodePlanOptions{.n_stages = 0});
      },
      {"n_stages"});
}

// Every builder output validates, for many shapes, link capacities and sampling modes.
TEST(Builders, SweepValidates) {
  const std::vector<std::vector<int64_t>> length_sets = {
      {1}, {100}, {7, 7, 7, 7}, {1, 2, 3, 50, 4, 300, 5}, {64, 1, 1, 1, 1, 1, 1, 1, 1, 1}};
  int n_plans = 0;
  for (int n_stages : {1, 2, 3, 4, 6}) {
    for (int m : {0, 1, 2, 4, 8}) {
      for (int64_t chunk : {0, 1, 3, 16, 1000}) {
        for (const auto& lengths : length_sets) {
          for (bool every : {false, true}) {
            SCOPED_TRACE(testing::Message() << "S=" << n_stages << " M=" << m << " C=" << chunk
                                            << " n=" << lengths.size() << " every=" << every);
            const PrefillPlanOptions o{.n_stages = n_stages,
                                       .n_micro_batches = m,
                                       .chunk_tokens = chunk,
                                       .sample_rule = every ? SampleRule::kEveryMicroBatch
                                                            : SampleRule::kWhereChunksSample};
            const auto seqs = prefill_seqs(lengths, 3);
            const StepPlan prefill = build_prefill_plan(11, seqs, o);
            ASSERT_NO_THROW(validate(prefill)) << prefill.describe();
            ASSERT_NO_THROW(validate(prefill, {.link_capacity = 1}));
            expect_standard_programs(prefill, every);
            const size_t groups = std::min<size_t>(m == 0 ? n_stages : m, lengths.size());
            if (chunk == 0) {
              EXPECT_EQ(prefill.micro_batches.size(), groups);
            } else {
              EXPECT_GE(prefill.micro_batches.size(), groups);
            }
            int64_t total = 0;
            for (int64_t l : lengths)
              total += l;
            EXPECT_EQ(prefill.n_tokens(), total);

            std::vector<SeqState> states;
            for (const PrefillSeq& s : seqs)
              states.push_back({s.seq, s.committed + s.n_tokens});
            const StepPlan decode = build_decode_plan(
                12, states, DecodePlanOptions{.n_stages = n_stages, .n_micro_batches = m});
            ASSERT_NO_THROW(validate(decode)) << decode.describe();
            ASSERT_NO_THROW(validate(decode, {.link_capacity = 1}));
            EXPECT_EQ(decode.micro_batches.size(),
                      std::min<size_t>(m == 0 ? n_stages : m, lengths.size()));
            EXPECT_EQ(decode.n_tokens(), static_cast<int64_t>(lengths.size()));
            n_plans += 2;
          }
        }
      }
    }
  }
  EXPECT_EQ(n_plans, 5 * 5 * 5 * 5 * 2 * 2);
}

}  // namespace
}  // namespace conveyor
