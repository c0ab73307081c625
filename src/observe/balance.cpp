// Trace validation and the stage-balance report: busy/idle time per stage, max/mean imbalance,
// bubble fraction measured vs. the ideal (S-1)/(M+S-1).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "conveyor/observe.hpp"
#include "core/check.hpp"

namespace conveyor {

void validate_trace(const Trace& trace, int n_stages) {
  if (n_stages < 1) {
    fail(ErrorCode::kInvalidArgument,
         "n_stages is {} but a pipeline has at least 1 stage; pass the stage count the trace was "
         "recorded with",
         n_stages);
  }
  for (size_t i = 0; i < trace.size(); ++i) {
    const TraceEvent& event = trace[i];
    if (event.stage < 0 || event.stage >= n_stages) {
      fail(ErrorCode::kInvalidArgument,
           "trace event {} has stage {} but the pipeline has {} stages (valid 0..{}); pass the "
           "stage count the trace was recorded with",
           i, event.stage, n_stages, n_stages - 1);
    }
    if (!std::isfinite(event.start_us) || !std::isfinite(event.end_us)) {
      fail(ErrorCode::kInvalidArgument,
           "trace event {} (stage {}) has a non-finite time: start_us {}, end_us {}", i,
           event.stage, event.start_us, event.end_us);
    }
    if (event.end_us < event.start_us) {
      fail(ErrorCode::kInvalidArgument,
           "trace event {} (stage {}) ends before it starts: start_us {}, end_us {}", i,
           event.stage, event.start_us, event.end_us);
    }
  }
}

namespace {

bool is_busy(OpKind kind) {
  return kind == OpKind::kCompute || kind == OpKind::kSample;
}

// Total length of the union of [start, end) intervals.
double covered_us(std::vector<std::pair<double, double>>& intervals) {
  std::sort(intervals.begin(), intervals.end());
  double total = 0.0;
  double run_start = 0.0;
  double run_end = -std::numeric_limits<double>::infinity();
  for (const auto& [start, end] : intervals) {
    if (start > run_end) {
      if (run_end > run_start) total += run_end - run_start;
      run_start = start;
      run_end = end;
    } else {
      run_end = std::max(run_end, end);
    }
  }
  if (run_end > run_start) total += run_end - run_start;
  return total;
}

BalanceReport make_report(const Trace& trace, int n_stages, int n_micro_batches,
                          std::optional<Phase> phase) {
  validate_trace(trace, n_stages);
  if (n_micro_batches < 1) {
    fail(ErrorCode::kInvalidArgument,
         "n_micro_batches is {} but the ideal bubble fraction needs at least 1 micro-batch",
         n_micro_batches);
  }
  BalanceReport report;
  report.n_micro_batches = n_micro_batches;
  report.ideal_bubble_fraction =
      static_cast<double>(n_stages - 1) / static_cast<double>(n_micro_batches + n_stages - 1);

  std::vector<std::vector<std::pair<double, double>>> busy(n_stages);
  report.stages.resize(n_stages);
  for (int s = 0; s < n_stages; ++s)
    report.stages[s].stage = s;
  double first = std::numeric_limits<double>::infinity();
  double last = -std::numeric_limits<double>::infinity();
  for (const TraceEvent& event : trace) {
    if (phase && event.phase != *phase) continue;
    first = std::min(first, event.start_us);
    last = std::max(last, event.end_us);
    if (is_busy(event.kind)) busy[event.stage].emplace_back(event.start_us, event.end_us);
    if (event.kind == OpKind::kCompute) ++report.stages[event.stage].n_compute;
  }
  if (!(last >= first)) return report;  // no events: all measures stay 0
  report.span_us = last - first;

  double max_busy = 0.0;
  double sum_busy = 0.0;
  double sum_idle = 0.0;
  for (int s = 0; s < n_stages; ++s) {
    StageBalance& stage = report.stages[s];
    stage.busy_us = covered_us(busy[s]);
    stage.idle_us = report.span_us - stage.busy_us;
    max_busy = std::max(max_busy, stage.busy_us);
    sum_busy += stage.busy_us;
    sum_idle += stage.idle_us;
  }
  const double mean_busy = sum_busy / n_stages;
  if (mean_busy > 0.0) report.imbalance = max_busy / mean_busy;
  // Idle over capacity rather than 1 - busy/capacity: exact when the numbers are.
  if (report.span_us > 0.0) report.bubble_fraction = sum_idle / (n_stages * report.span_us);
  return report;
}

}  // namespace

BalanceReport balance_report(const Trace& trace, int n_stages, int n_micro_batches) {
  return make_report(trace, n_stages, n_micro_batches, std::nullopt);
}

BalanceReport balance_report_for_phase(const Trace& trace, int n_stages, int n_micro_batches,
                                       Phase phase) {
  return make_report(trace, n_stages, n_micro_batches, phase);
}

std::string format_balance_report(const BalanceReport& report) {
  std::string out = fmt::format("{:>5}  {:>12}  {:>12}  {:>7}  {:>8}\n", "stage", "busy ms",
                                "idle ms", "busy %", "computes");
  for (const StageBalance& stage : report.stages) {
    const std::string busy_percent =
        report.span_us > 0.0 ? fmt::format("{:.1f}%", 100.0 * stage.busy_us / report.span_us)
                             : std::string("-");
    out +=
        fmt::format("{:>5}  {:>12.3f}  {:>12.3f}  {:>7}  {:>8}\n", stage.stage,
                    stage.busy_us / 1000.0, stage.idle_us / 1000.0, busy_percent, stage.n_compute);
  }
  const size_t n_stages = report.stages.size();
  out += fmt::format("span {:.3f} ms over {} stages, {} micro-batches\n", report.span_us / 1000.0,
                     n_stages, report.n_micro_batches);
  if (report.span_us <= 0.0) {
    out += "no timed events recorded: imbalance and bubble fraction not measured\n";
    out +=
        fmt::format("bubble fraction ideal (S-1)/(M+S-1): {:.3f}\n", report.ideal_bubble_fraction);
    return out;
  }
  if (report.imbalance > 0.0) {
    out += fmt::format("imbalance (max/mean busy): {:.3f}\n", report.imbalance);
  } else {
    out += "imbalance (max/mean busy): - (no compute recorded)\n";
  }
  out += fmt::format("bubble fraction: measured {:.3f}, ideal (S-1)/(M+S-1) {:.3f}\n",
                     report.bubble_fraction, report.ideal_bubble_fraction);
  return out;
}

}  // namespace conveyor
