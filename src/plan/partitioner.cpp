// Partitioner: per-stage costs and memory from the CostModel, the exact min-max DP, the
// KV-capacity mode, layout strings and the per-stage report.
#include "conveyor/partitioner.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "core/check.hpp"

namespace conveyor {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string gib(int64_t bytes) {
  return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

std::string seconds_text(double s) {
  if (s >= 1.0) return fmt::format("{:.3f} s", s);
  if (s >= 1e-3) return fmt::format("{:.3f} ms", s * 1e3);
  return fmt::format("{:.1f} us", s * 1e6);
}

// Everything one stage's numbers depend on, computed once per stage and layer count.
class StageModel {
 public:
  StageModel(const CostModel& model, const PartitionerOptions& options)
      : model_(model), options_(options) {
    if (options.objective == Objective::kMixed) {
      // Normalise by the whole model on stage 0's device so both phases weigh alike.
      const DeviceSpec& d = options.topology.device(0);
      prefill_total_ = model.stage_seconds({model.n_layers(), true, true}, options.prefill, d);
      decode_total_ = model.stage_seconds({model.n_layers(), true, true}, options.decode, d);
    }
  }

  StageReport report(int stage, LayerRange layers) const {
    const int n_stages = options_.n_stages;
    const DeviceSpec& device = options_.topology.device(stage);
    StageReport r;
    r.stage = stage;
    r.device = device.name;
    r.layers = layers;
    r.embedding = stage == 0;
    r.head = stage == n_stages - 1;
    const int64_t n = layers.size();
    r.weight_bytes = n * model_.layer_weight_bytes() +
                     (r.embedding ? model_.embedding_weight_bytes() : 0) +
                     (r.head ? model_.head_weight_bytes() : 0);
    const int64_t kv_per_token = n * model_.kv_bytes_per_token_per_layer();
    r.kv_bytes = kv_per_token * options_.max_context * options_.max_batch;
    r.workspace_bytes = workspace(r.head);
    r.memory_bytes = r.weight_bytes + r.kv_bytes + r.workspace_bytes;
    r.memory_limit = device.memory_bytes;
    if (r.memory_limit > 0) {
      const int64_t free = r.memory_limit - r.weight_bytes - r.workspace_bytes;
      r.kv_capacity_tokens = free > 0 && kv_per_token > 0 ? free / kv_per_token : 0;
    }
    const bool last = stage == n_stages - 1;
    if (!last) {
      const LinkSpec link = options_.topology.link(stage);
      r.send_prefill_s = model_.send_seconds(options_.prefill, link, device);
      r.send_decode_s = model_.send_seconds(options_.decode, link, device);
    }
    r.prefill_s =
        model_.stage_seconds({n, r.embedding, r.head}, options_.prefill, device) + r.send_prefill_s;
    r.decode_s =
        model_.stage_seconds({n, r.embedding, r.head}, options_.decode, device) + r.send_decode_s;
    switch (options_.objective) {
      case Objective::kPrefillThroughput:
        r.cost = r.prefill_s;
        break;
      case Objective::kDecodeLatency:
      case Objective::kKvCapacity:
        r.cost = r.decode_s;
        break;
      case Objective::kMixed: {
        const double w = options_.prefill_weight;
        r.cost = w * r.prefill_s / std::max(prefill_total_, 1e-30) +
                 (1.0 - w) * r.decode_s / std::max(decode_total_, 1e-30);
        break;
      }
    }
    return r;
  }

 private:
  int64_t workspace(bool head) const {
    if (options_.workspace_bytes >= 0) return options_.workspace_bytes;
    // Scratch of one micro-batch (normed rows, q/k/v, attention out, gate/up), two link
    // buffers, and on the head stage the logits rows.
    const ModelConfig& c = model_.config();
    const int64_t act = static_cast<int64_t>(dtype_size(model_.options().activation_dtype));
    const int64_t rows = options_.prefill.n_tokens;
    int64_t bytes =
        rows * act * (3 * c.hidden_size + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.intermediate_size);
    bytes += 2 * model_.activation_bytes(options_.prefill);
    if (head) bytes += options_.prefill.n_head_rows * c.vocab_size * 4;
    return bytes;
  }

  const CostModel& model_;
  const PartitionerOptions& options_;
  double prefill_total_ = 1.0;
  double decode_total_ = 1.0;
};

PartitionPlan make_plan(const StageModel& stages, const Partition& partition, Objective objective) {
  PartitionPlan plan;
  plan.partition = partition;
  plan.objective = objective;
  double sum = 0.0;
  for (int s = 0; s < partition.n_stages(); ++s) {
    StageReport r = stages.report(s, partition.range(s));
    plan.max_cost = std::max(plan.max_cost, r.cost);
    sum += r.cost;
    if (r.kv_capacity_tokens >= 0) {
      plan.kv_capacity_tokens = plan.kv_capacity_tokens < 0
                                    ? r.kv_capacity_tokens
                                    : std::min(plan.kv_capacity_tokens, r.kv_capacity_tokens);
    }
    plan.stages.push_back(std::move(r));
  }
  plan.mean_cost = sum / partition.n_stages();
  plan.imbalance = plan.mean_cost > 0.0 ? plan.max_cost / plan.mean_cost : 0.0;
  return plan;
}

std::string shortfall_message(const StageReport& r, const PartitionerOptions& options) {
  return fmt::format(
      "stage {} ({}, layers [{},{}){}{}) needs {} (weights {} + KV {} for {} tokens x {} "
      "sequences + workspace {}) but the device holds {}: short by {}",
      r.stage, r.device, r.layers.first, r.layers.last, r.embedding ? " + embedding" : "",
      r.head ? " + lm_head" : "", gib(r.memory_bytes), gib(r.weight_bytes), gib(r.kv_bytes),
      options.max_context, options.max_batch, gib(r.workspace_bytes), gib(r.memory_limit),
      gib(r.shortfall_bytes()));
}

}  // namespace

std::string_view to_string(Objective objective) {
  switch (objective) {
    case Objective::kPrefillThroughput:
      return "prefill";
    case Objective::kDecodeLatency:
      return "decode";
    case Objective::kMixed:
      return "mixed";
    case Objective::kKvCapacity:
      return "kv";
  }
  return "?";
}

Objective parse_objective(std::string_view text) {
  if (text == "prefill") return Objective::kPrefillThroughput;
  if (text == "decode") return Objective::kDecodeLatency;
  if (text == "mixed") return Objective::kMixed;
  if (text == "kv") return Objective::kKvCapacity;
  fail(ErrorCode::kInvalidArgument, "unknown objective \"{}\"; use prefill, decode, mixed or kv",
       text);
}

void PartitionerOptions::validate() const {
  if (n_stages < 1) {
    fail(ErrorCode::kInvalidArgument, "n_stages is {} but must be at least 1", n_stages);
  }
  topology.validate(n_stages);
  if (!(prefill_weight >= 0.0 && prefill_weight <= 1.0)) {
    fail(ErrorCode::kInvalidArgument, "prefill_weight is {} but must lie in [0, 1]",
         prefill_weight);
  }
  if (prefill.phase != Phase::kPrefill || prefill.n_tokens < 1) {
    fail(ErrorCode::kInvalidArgument,
         "the prefill workload must be a prefill of at least one token (use Workload::prefill)");
  }
  if (decode.phase != Phase::kDecode || decode.n_tokens < 1) {
    fail(ErrorCode::kInvalidArgument,
         "the decode workload must be a decode of at least one sequence (use Workload::decode)");
  }
  if (max_context < 1 || max_batch < 1) {
    fail(ErrorCode::kInvalidArgument, "max_context ({}) and max_batch ({}) must be at least 1",
         max_context, max_batch);
  }
}

bool PartitionPlan::fits() const {
  return std::all_of(stages.begin(), stages.end(), [](const StageReport& r) { return r.fits(); });
}

std::string PartitionPlan::describe() const {
  std::string out =
      fmt::format("{:>5}  {:<10} {:>9} {:>6} {:>11} {:>11} {:>23} {:>12} {:>11} {:>11}\n", "stage",
                  "device", "layers", "count", "weights", "KV resvd", "memory / limit",
                  "KV capacity", "prefill", "decode");
  for (const StageReport& r : stages) {
    const std::string layers = fmt::format("{}-{}", r.layers.first, r.layers.last - 1);
    const std::string extra = std::string(r.embedding ? "e" : "") + std::string(r.head ? "h" : "");
    out += fmt::format(
        "{:>5}  {:<10} {:>9} {:>6} {:>11} {:>11} {:>23} {:>12} {:>11} {:>11}{}\n", r.stage,
        r.device, layers, fmt::format("{}{}", r.layers.size(), extra.empty() ? "" : "+" + extra),
        gib(r.weight_bytes), gib(r.kv_bytes),
        fmt::format("{} / {}", gib(r.memory_bytes),
                    r.memory_limit > 0 ? gib(r.memory_limit) : std::string("inf")),
        r.kv_capacity_tokens >= 0 ? fmt::format("{}", r.kv_capacity_tokens) : std::string("inf"),
        seconds_text(r.prefill_s), seconds_text(r.decode_s), r.fits() ? "" : "  DOES NOT FIT");
  }
  out += fmt::format("partition {} ({}), objective {}: max/mean stage cost {:.3f}",
                     partition.to_string(), to_layout(partition), to_string(objective), imbalance);
  if (kv_capacity_tokens >= 0) out += fmt::format(", KV capacity {} tokens", kv_capacity_tokens);
  out += "\n";
  return out;
}

PartitionPlan evaluate_partition(const CostModel& model, const Partition& partition,
                                 const PartitionerOptions& options) {
  options.validate();
  if (partition.n_layers() != model.n_layers() || partition.n_stages() != options.n_stages) {
    fail(ErrorCode::kInvalidArgument,
         "partition covers {} layers on {} stages but the model has {} layers and the options "
         "{} stages",
         partition.n_layers(), partition.n_stages(), model.n_layers(), options.n_stages);
  }
  for (const DeviceSpec& d : options.topology.devices) {
    if (d.profile) model.check_profile(*d.profile);
  }
  return make_plan(StageModel(model, options), partition, options.objective);
}

void check_memory(const PartitionPlan& plan) {
  for (const StageReport& r : plan.stages) {
    if (r.fits()) continue;
    fail(ErrorCode::kOutOfMemory,
         "partition {}: stage {} ({}) needs {} (weights {} + KV {} + workspace {}) but the "
         "device holds {}: short by {}; move layers off stage {}, add stages, lower "
         "max_context or max_batch, or use a device with more memory",
         plan.partition.to_string(), r.stage, r.device, gib(r.memory_bytes), gib(r.weight_bytes),
         gib(r.kv_bytes), gib(r.workspace_bytes), gib(r.memory_limit), gib(r.shortfall_bytes()),
         r.stage);
  }
}

std::vector<int64_t> min_max_partition(int64_t n_layers, int n_stages, const StageCostFn& cost) {
  if (n_stages < 1 || n_layers < n_stages) {
    fail(ErrorCode::kInvalidArgument,
         "cannot split {} layers over {} stages: every stage needs at least one layer; use at "
         "most {} stages",
         n_layers, n_stages, n_layers);
  }
  struct Cell {
    double max = kInf;
    double sumsq = kInf;
    int64_t from = -1;
  };
  auto better = [](double max_a, double sq_a, const Cell& b) {
    if (max_a < b.max) {
      // Equal within rounding counts as a tie (costs are sums of doubles).
      if (b.max - max_a > 1e-12 * std::max(1.0, std::abs(b.max))) return true;
      return sq_a < b.sumsq;
    }
    if (max_a - b.max <= 1e-12 * std::max(1.0, std::abs(max_a))) return sq_a < b.sumsq;
    return false;
  };
  const auto L = static_cast<size_t>(n_layers);
  const auto S = static_cast<size_t>(n_stages);
  // dp[s][j]: stages [0, s) cover layers [0, j).
  std::vector<std::vector<Cell>> dp(S + 1, std::vector<Cell>(L + 1));
  dp[0][0] = Cell{0.0, 0.0, -1};
  for (size_t s = 1; s <= S; ++s) {
    // Stage s-1 ends at j; the stages after it need at least one layer each.
    for (size_t j = s; j + (S - s) <= L; ++j) {
      Cell& cell = dp[s][j];
      for (size_t i = s - 1; i < j; ++i) {
        const Cell& prev = dp[s - 1][i];
        if (!std::isfinite(prev.max)) continue;
        const double c =
            cost(static_cast<int>(s - 1), static_cast<int64_t>(i), static_cast<int64_t>(j));
        if (!std::isfinite(c)) continue;
        const double m = std::max(prev.max, c);
        const double sq = prev.sumsq + c * c;
        if (better(m, sq, cell)) cell = Cell{m, sq, static_cast<int64_t>(i)};
      }
    }
  }
  if (!std::isfinite(dp[S][L].max)) return {};
  std::vector<int64_t> counts(S);
  size_t j = L;
  for (size_t s = S; s >= 1; --s) {
    const auto i = static_cast<size_t>(dp[s][j].from);
    counts[s - 1] = static_cast<int64_t>(j - i);
    j = i;
  }
  return counts;
}

PartitionPlan balanced_partition(const CostModel& model, const PartitionerOptions& options) {
  options.validate();
  for (const DeviceSpec& d : options.topology.devices) {
    if (d.profile) model.check_profile(*d.profile);
  }
  const int64_t n_layers = model.n_layers();
  const int n_stages = options.n_stages;
  if (n_stages > n_layers) {
    fail(ErrorCode::kInvalidArgument,
         "{} stages but the model has only {} decoder layers; every stage needs one, so use at "
         "most {} stages",
         n_stages, n_layers, n_layers);
  }
  const StageModel stages(model, options);
  // Stage numbers depend only on (stage, layer count): cache them.
  std::vector<std::vector<StageReport>> cache(static_cast<size_t>(n_stages));
  for (int s = 0; s < n_stages; ++s) {
    auto& row = cache[static_cast<size_t>(s)];
    row.reserve(static_cast<size_t>(n_layers + 1));
    for (int64_t n = 0; n <= n_layers; ++n)
      row.push_back(stages.report(s, LayerRange{0, n}));
  }
  auto at = [&](int s, int64_t first, int64_t last) -> const StageReport& {
    return cache[static_cast<size_t>(s)][static_cast<size_t>(last - first)];
  };

  // Fit first: the partition closest to fitting when nothing fits names the stage to fix.
  std::vector<int64_t> counts;
  auto fitting_cost = [&](int s, int64_t first, int64_t last) {
    const StageReport& r = at(s, first, last);
    return r.fits() ? r.cost : kInf;
  };
  if (options.objective == Objective::kKvCapacity) {
    // Maximise the weakest stage's KV capacity, then the fastest partition that keeps it.
    const std::vector<int64_t> best_kv =
        min_max_partition(n_layers, n_stages, [&](int s, int64_t first, int64_t last) {
          const StageReport& r = at(s, first, last);
          if (!r.fits()) return kInf;
          return r.kv_capacity_tokens < 0 ? 0.0 : -static_cast<double>(r.kv_capacity_tokens);
        });
    if (!best_kv.empty()) {
      const PartitionPlan kv_plan =
          make_plan(stages, Partition::from_counts(n_layers, best_kv), options.objective);
      const int64_t floor = kv_plan.kv_capacity_tokens;
      counts = min_max_partition(n_layers, n_stages, [&](int s, int64_t first, int64_t last) {
        const StageReport& r = at(s, first, last);
        if (!r.fits() || (floor >= 0 && r.kv_capacity_tokens < floor)) return kInf;
        return r.cost;
      });
    }
  } else {
    counts = min_max_partition(n_layers, n_stages, fitting_cost);
  }
  if (counts.empty()) {
    const std::vector<int64_t> closest =
        min_max_partition(n_layers, n_stages, [&](int s, int64_t first, int64_t last) {
          const StageReport& r = at(s, first, last);
          // An unlimited device never limits the maximum.
          return r.memory_limit > 0 ? static_cast<double>(r.memory_bytes - r.memory_limit) : -1e30;
        });
    const PartitionPlan plan =
        make_plan(stages, Partition::from_counts(n_layers, closest), options.objective);
    const StageReport* worst = &plan.stages.front();
    for (const StageReport& r : plan.stages) {
      if (r.shortfall_bytes() > worst->shortfall_bytes()) worst = &r;
    }
    fail(ErrorCode::kOutOfMemory,
         "no partition of {} decoder layers over {} stages fits in memory; the closest, {}, "
         "still fails: {}; add stages, lower max_context or max_batch, or use devices with more "
         "memory",
         n_layers, n_stages, plan.partition.to_string(), shortfall_message(*worst, options));
  }
  return make_plan(stages, Partition::from_counts(n_layers, counts), options.objective);
}

}  // namespace conveyor
