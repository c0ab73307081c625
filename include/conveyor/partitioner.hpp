// Partitioner: cost-balanced partitions (exact contiguous min-max by dynamic programming under
// per-device memory limits, heterogeneous devices), layout strings and per-stage reports.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/cost_model.hpp"
#include "conveyor/partition.hpp"

namespace conveyor {

// What the balanced partition minimises. Every objective is a min-max over stages of the stage's
// time for one micro-batch, its send to the next stage included: in a full pipeline the slowest
// stage sets the prefill throughput and, with M decode micro-batches, the decode step time
// ((M + S - 1) x the slowest stage).
enum class Objective {
  kPrefillThroughput,  // stage time of PartitionerOptions::prefill
  kDecodeLatency,      // stage time of PartitionerOptions::decode
  kMixed,              // w * prefill / total prefill + (1 - w) * decode / total decode
  kKvCapacity,         // maximise the KV tokens of the weakest stage, then decode time
};

std::string_view to_string(Objective objective);
// "prefill", "decode", "mixed", "kv". Throws kInvalidArgument listing them otherwise.
Objective parse_objective(std::string_view text);

struct PartitionerOptions {
  int n_stages = 1;
  // The device of each stage (heterogeneous pipelines) and the links between them.
  Topology topology;
  Objective objective = Objective::kDecodeLatency;
  double prefill_weight = 0.5;                                    // kMixed only, in [0, 1]
  Workload prefill = Workload::prefill({.tokens_per_seq = 512});  // one prefill micro-batch
  Workload decode = Workload::decode(1, 4096);                    // one decode micro-batch
  // Memory each stage must hold: its weights, K/V of max_batch sequences of max_context
  // positions for its layers, and a workspace (-1: estimated from the prefill micro-batch).
  // A device with memory_bytes = 0 is unlimited.
  int64_t max_context = 4096;
  int64_t max_batch = 1;
  int64_t workspace_bytes = -1;

  // Throws conveyor::Error(kInvalidArgument) naming the field, value, limit and fix.
  void validate() const;
};

// One stage of a partition, before anything runs.
struct StageReport {
  int stage = 0;
  std::string device;
  LayerRange layers;
  bool embedding = false;
  bool head = false;
  int64_t weight_bytes = 0;
  int64_t kv_bytes = 0;  // reserved: max_batch x max_context positions of its layers
  int64_t workspace_bytes = 0;
  int64_t memory_bytes = 0;  // weights + kv + workspace
  int64_t memory_limit = 0;  // 0: unlimited
  // K/V positions (summed over sequences) that fit beside the weights and workspace;
  // -1 when the device is unlimited.
  int64_t kv_capacity_tokens = -1;
  double prefill_s = 0.0;       // one prefill micro-batch through the stage, its send included
  double decode_s = 0.0;        // one decode micro-batch, its send included
  double send_prefill_s = 0.0;  // part of prefill_s spent sending (0 on the last stage)
  double send_decode_s = 0.0;
  double cost = 0.0;  // what the objective compares (seconds, or normalised for kMixed)

  bool fits() const { return memory_limit == 0 || memory_bytes <= memory_limit; }
  int64_t shortfall_bytes() const { return fits() ? 0 : memory_bytes - memory_limit; }
};

struct PartitionPlan {
  Partition partition = Partition::even(1, 1);
  Objective objective = Objective::kDecodeLatency;
  std::vector<StageReport> stages;
  double max_cost = 0.0;
  double mean_cost = 0.0;
  double imbalance = 0.0;           // max_cost / mean_cost (1 = balanced)
  int64_t kv_capacity_tokens = -1;  // the weakest stage's (-1: unlimited)

  bool fits() const;
  // A table: stage, device, layers, weights, KV reserved, memory / limit, KV capacity, prefill
  // and decode time; then the imbalance. Ends with a newline.
  std::string describe() const;
};

// The report of a given partition (even, explicit, parsed). Does not throw on memory: see fits().
PartitionPlan evaluate_partition(const CostModel& model, const Partition& partition,
                                 const PartitionerOptions& options);

// The exact optimum of options.objective over all contiguous partitions that fit in memory.
// Throws conveyor::Error(kOutOfMemory) when none fits, naming the stage of the closest partition,
// its need, the limit and the shortfall.
PartitionPlan balanced_partition(const CostModel& model, const PartitionerOptions& options);

// Throws conveyor::Error(kOutOfMemory) for the first stage of `plan` that does not fit, naming
// it, its need (weights, KV, workspace), the limit and the shortfall.
void check_memory(const PartitionPlan& plan);

// The contiguous min-max problem: split decoder layers [0, n_layers) into n_stages non-empty
// ranges minimising max_s cost(s, first, last); cost returns +infinity for a range stage s
// cannot take. Ties in the maximum go to the smaller sum of squared costs. Returns the layer
// counts, or an empty vector when no finite solution exists. O(n_stages * n_layers^2) calls.
using StageCostFn = std::function<double(int stage, int64_t first, int64_t last)>;
std::vector<int64_t> min_max_partition(int64_t n_layers, int n_stages, const StageCostFn& cost);

}  // namespace conveyor
