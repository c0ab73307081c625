// Tests of the partitioner: the min-max DP against brute force, memory limits and their errors,
// heterogeneous devices, objectives, KV-capacity mode, the 8B balance, and layout strings.
#include <gtest/gtest.h>

#include "common/test_util.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "conveyor/error.hpp"
#include "conveyor/partitioner.hpp"
#include "model/make_model.hpp"

namespace conveyor {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

ModelConfig load_config(const std::string& name) {
  return ModelConfig::load(std::filesystem::path(CONVEYOR_TEST_DATA_DIR) / ".." / ".." / "configs" /
                           name);
}

using test::expect_error;

// Every composition of n_layers into n_stages positive parts; returns the best max cost.
double brute_force(int64_t n_layers, int n_stages, const StageCostFn& cost) {
  double best = kInf;
  std::vector<int64_t> counts;
  std::function<void(int64_t, int)> rec = [&](int64_t first, int stage) {
    if (stage == n_stages) {
      if (first != n_layers) return;
      double m = -kInf;
      int64_t begin = 0;
      for (int s = 0; s < n_stages; ++s) {
        m = std::max(m, cost(s, begin, begin + counts[static_cast<size_t>(s)]));
        begin += counts[static_cast<size_t>(s)];
      }
      best = std::min(best, m);
      return;
    }
    const int64_t left_for_rest = n_stages - stage - 1;
    for (int64_t n = 1; first + n + left_for_rest <= n_layers; ++n) {
      counts.push_back(n);
      rec(first + n, stage + 1);
      counts.pop_back();
    }
  };
  rec(0, 0);
  return best;
}

double max_cost_of(const std::vector<int64_t>& counts, const StageCostFn& cost) {
  double m = -kInf;
  int64_t begin = 0;
  for (size_t s = 0; s < counts.size(); ++s) {
    m = std::max(m, cost(static_cast<int>(s), begin, begin + counts[s]));
    begin += counts[s];
  }
  return m;
}

TEST(MinMaxPartition, OptimalAgainstBruteForce) {
  std::mt19937 rng(1234);
  std::uniform_real_distribution<double> weight(0.1, 3.0);
  std::uniform_real_distribution<double> speed(0.5, 2.0);
  std::uniform_int_distribution<int> coin(0, 9);
  int instances = 0, infeasible = 0;
  for (int64_t n_layers = 1; n_layers <= 11; ++n_layers) {
    for (int n_stages = 1; n_stages <= std::min<int64_t>(n_layers, 5); ++n_stages) {
      for (int trial = 0; trial < 6; ++trial) {
        std::vector<double> w(static_cast<size_t>(n_layers));
        for (double& x : w)
          x = weight(rng);
        std::vector<double> stage_speed(static_cast<size_t>(n_stages));
        for (double& x : stage_speed)
          x = speed(rng);  // heterogeneous devices
        const double head = weight(rng) * 2.0, send = weight(rng) * 0.2;
        // Memory: a stage may hold at most `cap` layers (sometimes too few for any split).
        const int64_t cap = 1 + coin(rng) % std::max<int64_t>(n_layers, 1);
        const StageCostFn cost = [&](int s, int64_t first, int64_t last) {
          if (last - first > cap) return kInf;
          double t = 0.0;
          for (int64_t l = first; l < last; ++l)
            t += w[static_cast<size_t>(l)];
          if (s == n_stages - 1) t += head;
          t /= stage_speed[static_cast<size_t>(s)];
          if (s < n_stages - 1) t += send;
          return t;
        };
        const double expected = brute_force(n_layers, n_stages, cost);
        const std::vector<int64_t> counts = min_max_partition(n_layers, n_stages, cost);
        ++instances;
        if (!std::isfinite(expected)) {
          EXPECT_TRUE(counts.empty());
          ++infeasible;
          continue;
        }
        ASSERT_EQ(counts.size(), static_cast<size_t>(n_stages));
        int64_t sum = 0;
        for (int64_t c : counts) {
          EXPECT_GE(c, 1);
          sum += c;
        }
        EXPECT_EQ(sum, n_layers);
        EXPECT_NEAR(max_cost_of(counts, cost), expected, 1e-9)
            << "L=" << n_layers << " S=" << n_stages << " trial " << trial;
      }
    }
  }
  EXPECT_GT(instances, 200);
  EXPECT_GT(infeasible, 0);  // the memory cap made some instances impossible
}

TEST(MinMaxPartition, RejectsTooManyStages) {
  expect_error([] { min_max_partition(3, 4, [](int, int64_t, int64_t) { return 1.0; }); },
               ErrorCode::kInvalidArgument, {"3 layers", "4 stages"});
}

PartitionerOptions h100_options(int n_stages, Objective objective = Objective::kDecodeLatency) {
  PartitionerOptions o;
  o.n_stages = n_stages;
  o.topology.devices = {device_preset("h100")};
  o.topology.links = {link_preset("nvlink")};
  o.objective = objective;
  o.prefill = Workload::prefill({.tokens_per_seq = 2048});
  // Latency: one sequence at a 1k context. Both 8B thresholds below hinge on the head costing
  // h >= 16/7 = 2.29 layers ((8 + h) / mean >= 1.2 and 9 / mean <= 1.05 with mean = (32 + h) / 4);
  // the H100 preset gives h = 2.34 here and h = 2.28 at a 4k context (KV reads dilute it).
  o.decode = Workload::decode(1, 1024);
  o.max_context = 8192;
  o.max_batch = 8;
  return o;
}

// Acceptance: on the 8B shape the balanced split is close to 1.0 where the even one is not.
TEST(BalancedPartition, Llama3EightBillionDecodeOnH100) {
  const CostModel model(load_config("llama-3-8b.json"));
  for (int S : {4, 8}) {
    const PartitionerOptions o = h100_options(S);
    const PartitionPlan even = evaluate_partition(model, Partition::even(32, S), o);
    const PartitionPlan best = balanced_partition(model, o);
    EXPECT_GE(even.imbalance, 1.20) << "S=" << S;
    EXPECT_LT(best.imbalance, even.imbalance);
    EXPECT_LT(best.partition.counts().back(), even.partition.counts().back());
    if (S == 4) {
      EXPECT_LE(best.imbalance, 1.05) << best.describe();
    } else {
      // With whole layers and the head pinned to the last stage, 8 stages cannot get within
      // 5 %: one layer is ~23 % of a mean stage. The DP still reaches the integer optimum.
      EXPECT_LE(best.imbalance, 1.17) << best.describe();
    }
    EXPECT_TRUE(best.fits());
  }
}

TEST(BalancedPartition, MatchesBruteForceOnTheCostModel) {
  const CostModel model(preset_config("small"));
  for (Objective objective : {Objective::kPrefillThroughput, Objective::kDecodeLatency}) {
    for (int S = 1; S <= 4; ++S) {
      PartitionerOptions o = h100_options(S, objective);
      o.topology.devices = {device_preset("a100"), device_preset("h100"), device_preset("h200"),
                            device_preset("a100-40gb")};
      o.topology.devices.resize(static_cast<size_t>(S));
      const PartitionPlan best = balanced_partition(model, o);
      // Brute force over every partition's reported max cost.
      double brute = kInf;
      std::vector<int64_t> counts;
      std::function<void(int64_t, int)> rec = [&](int64_t first, int stage) {
        if (stage == S) {
          if (first == 12) {
            brute = std::min(
                brute, evaluate_partition(model, Partition::from_counts(12, counts), o).max_cost);
          }
          return;
        }
        for (int64_t n = 1; first + n + (S - stage - 1) <= 12; ++n) {
          counts.push_back(n);
          rec(first + n, stage + 1);
          counts.pop_back();
        }
      };
      rec(0, 0);
      EXPECT_NEAR(best.max_cost, brute, 1e-12 * brute) << "S=" << S;
    }
  }
}

TEST(BalancedPartition, HeterogeneousDevicesGetLayersByTheirSpeed) {
  const CostModel model(load_config("llama-3-8b.json"));
  PartitionerOptions o = h100_options(2);
  o.topology.devices = {device_preset("a100"), device_preset("h200")};  // 2.0 vs 4.8 TB/s
  const PartitionPlan plan = balanced_partition(model, o);
  const auto counts = plan.partition.counts();
  EXPECT_GT(counts[1], counts[0]) << plan.describe();
  EXPECT_EQ(plan.stages[0].device, "a100");
  EXPECT_EQ(plan.stages[1].device, "h200");
  EXPECT_LT(plan.imbalance, 1.06) << plan.describe();
}

TEST(BalancedPartition, HonoursMemoryLimits) {
  const CostModel model(load_config("llama-3-70b.json"));
  // 70B in bf16 is ~141 GB of weights: two 40 GB A100s cannot hold it with any split.
  PartitionerOptions o = h100_options(2);
  o.topology.devices = {device_preset("a100-40gb")};
  o.max_batch = 1;
  o.max_context = 4096;
  expect_error([&] { balanced_partition(model, o); }, ErrorCode::kOutOfMemory,
               {"no partition of 80 decoder layers over 2 stages", "stage ", "short by", "GiB"});
  // Four fit; the plan reports every stage within its limit.
  o.n_stages = 4;
  const PartitionPlan plan = balanced_partition(model, o);
  EXPECT_TRUE(plan.fits()) << plan.describe();
  for (const StageReport& r : plan.stages) {
    EXPECT_LE(r.memory_bytes, r.memory_limit);
    EXPECT_GT(r.kv_capacity_tokens, 0);
  }
  // A small second device forces layers onto the big ones, even though time prefers balance.
  PartitionerOptions mixed = h100_options(3);
  const CostModel m8(load_config("llama-3-8b.json"));
  mixed.topology.devices = {device_preset("h100"), device_preset("h100"), device_preset("h100")};
  mixed.topology.devices[1].memory_bytes = 6LL << 30;
  const PartitionPlan constrained = balanced_partition(m8, mixed);
  EXPECT_TRUE(constrained.fits()) << constrained.describe();
  EXPECT_LE(constrained.stages[1].memory_bytes, 6LL << 30);
  const PartitionPlan unconstrained = balanced_partition(m8, h100_options(3));
  EXPECT_LT(constrained.partition.counts()[1], unconstrained.partition.counts()[1]);

  // An explicit partition that does not fit: check_memory names the stage and the shortfall.
  PartitionerOptions two = h100_options(2);
  two.topology.devices = {device_preset("h100")};
  two.max_context = 4096;
  two.max_batch = 1;
  const PartitionPlan bad = evaluate_partition(model, Partition::from_counts(80, {79, 1}), two);
  EXPECT_FALSE(bad.fits());
  expect_error([&] { check_memory(bad); }, ErrorCode::kOutOfMemory,
               {"stage 0", "short by", "move layers off stage 0"});
}

TEST(BalancedPartition, ObjectivesAndKvCapacity) {
  const CostModel model(load_config("llama-3-8b.json"));
  // Prefill: the head projects one row per sequence, so even is already near balanced.
  const PartitionerOptions p = h100_options(4, Objective::kPrefillThroughput);
  const PartitionPlan prefill = balanced_partition(model, p);
  EXPECT_LT(evaluate_partition(model, Partition::even(32, 4), p).imbalance, 1.05);
  EXPECT_LE(prefill.imbalance, 1.05);

  // Mixed with weight 1 is prefill; with weight 0 decode.
  PartitionerOptions m = h100_options(4, Objective::kMixed);
  m.prefill_weight = 0.0;
  EXPECT_EQ(balanced_partition(model, m).partition,
            balanced_partition(model, h100_options(4)).partition);
  m.prefill_weight = 1.0;
  EXPECT_EQ(balanced_partition(model, m).partition.counts().back(),
            prefill.partition.counts().back());
  m.prefill_weight = 1.5;
  EXPECT_THROW(balanced_partition(model, m), Error);

  // KV mode: the weakest stage holds at least as many tokens as under any other objective.
  PartitionerOptions kv = h100_options(4, Objective::kKvCapacity);
  kv.topology.devices = {device_preset("a100-40gb"), device_preset("h100"), device_preset("h100"),
                         device_preset("a100-40gb")};
  const PartitionPlan kv_plan = balanced_partition(model, kv);
  PartitionerOptions time = kv;
  time.objective = Objective::kDecodeLatency;
  const PartitionPlan time_plan = balanced_partition(model, time);
  EXPECT_GE(kv_plan.kv_capacity_tokens, time_plan.kv_capacity_tokens);
  EXPECT_GE(kv_plan.kv_capacity_tokens,
            evaluate_partition(model, Partition::even(32, 4), kv).kv_capacity_tokens);
  // The 40 GB devices get fewer layers.
  EXPECT_LT(kv_plan.partition.counts()[0], kv_plan.partition.counts()[1]) << kv_plan.describe();
  EXPECT_EQ(parse_objective("kv"), Objective::kKvCapacity);
  expect_error([] { parse_objective("fast"); }, ErrorCode::kInvalidArgument, {"prefill", "kv"});
}

TEST(BalancedPartition, OptionErrors) {
  const CostModel model(preset_config("small"));
  PartitionerOptions o = h100_options(4);
  o.topology.devices = {device_preset("h100"), device_preset("h100")};
  expect_error([&] { balanced_partition(model, o); }, ErrorCode::kInvalidArgument,
               {"2 devices for 4 stages"});
  o = h100_options(13);
  expect_error([&] { balanced_partition(model, o); }, ErrorCode::kInvalidArgument,
               {"13 stages", "12 decoder layers"});
  o = h100_options(4);
  o.topology.links = {link_preset("nvlink"), link_preset("nvlink")};
  expect_error([&] { balanced_partition(model, o); }, ErrorCode::kInvalidArgument,
               {"2 links for 4 stages"});
}

TEST(Layout, ParseAndPrint) {
  const Partition p = parse_layout("emb,0-4|5-10|11-16|17-23,head", 24);
  EXPECT_EQ(p.counts(), (std::vector<int64_t>{5, 6, 6, 7}));
  EXPECT_EQ(to_layout(p), "emb,0-4|5-10|11-16|17-23,head");
  EXPECT_EQ(parse_layout(to_layout(p), 24), p);
  EXPECT_EQ(parse_layout("0-1|2|3", 4).counts(), (std::vector<int64_t>{2, 1, 1}));
  EXPECT_EQ(parse_layout(" emb , 0-1 , 2 | 3 , head ", 4).counts(), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(to_layout(Partition::from_counts(3, {1, 2})), "emb,0|1-2,head");

  EXPECT_EQ(parse_partition_spec("even", 10, 4).counts(), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_EQ(parse_partition_spec("3,3,4", 10, 0).counts(), (std::vector<int64_t>{3, 3, 4}));
  EXPECT_EQ(parse_partition_spec("emb,0-4|5-9,head", 10, 2).counts(), (std::vector<int64_t>{5, 5}));
  expect_error([] { parse_partition_spec("3,3,4", 10, 2); }, ErrorCode::kInvalidArgument,
               {"3 stages", "2 were asked"});
}

TEST(Layout, RejectsWhatTheRuntimeCannotRun) {
  const ErrorCode inv = ErrorCode::kInvalidArgument;
  expect_error([] { parse_layout("0-4|emb,5-9,head", 10); }, inv, {"embedding on stage 1"});
  expect_error([] { parse_layout("emb,0-4,head|5-9", 10); }, inv,
               {"lm_head on stage 0 of 2", "last stage"});
  expect_error([] { parse_layout("emb,0-4|5-9|head", 10); }, inv, {"stage 2 has no decoder layer"});
  expect_error([] { parse_layout("0-4|6-9", 10); }, inv, {"stage 1 continues at layer 6"});
  expect_error([] { parse_layout("0-4|4-9", 10); }, inv, {"continues at layer 4"});
  expect_error([] { parse_layout("0-4|5-8", 10); }, inv, {"covers layers 0-8", "9-9"});
  expect_error([] { parse_layout("0-4|5-10", 10); }, inv, {"layer 10", "0-9"});
  expect_error([] { parse_layout("0-4|9-5", 10); }, inv, {"backwards"});
  expect_error([] { parse_layout("0-4|x", 10); }, inv, {"\"x\" is not a layer number"});
  expect_error([] { parse_layout("0-4||5-9", 10); }, inv, {"stage 1 has an empty item"});
}

}  // namespace
}  // namespace conveyor
