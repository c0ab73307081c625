// Observability exports over a recorded Trace: Chrome trace JSON (Perfetto), an SVG timeline and
// the stage-balance report (busy time per stage, imbalance, bubble fraction measured vs. ideal).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "conveyor/step_plan.hpp"
#include "conveyor/trace.hpp"

namespace conveyor {

// All functions here are pure over their arguments (the write_* ones also write one file) and
// safe to call from any thread. Each one first checks the trace: n_stages >= 1, every event's
// stage in [0, n_stages), finite times with end_us >= start_us; anything else throws
// conveyor::Error(kInvalidArgument) naming the offending event.
void validate_trace(const Trace& trace, int n_stages);

// ---- Chrome trace event format ---------------------------------------------------------------

// {"traceEvents": [...], "displayTimeUnit": "ms"}, the JSON chrome://tracing and Perfetto open.
// One track per stage (pid 0, tid = stage, named "stage <s>" by thread_name metadata events);
// one complete event ("ph": "X") per trace event with ts/dur in microseconds as recorded, name
// "compute mb3" / "send mb3" / ... / "commit", cat "prefill" or "decode" and
// args {step, micro_batch, n_tokens}.
std::string chrome_trace_json(const Trace& trace, int n_stages);

// Writes chrome_trace_json(trace, n_stages) to `path`; throws conveyor::Error naming the path when
// the file cannot be written.
void write_chrome_trace(const std::filesystem::path& path, const Trace& trace, int n_stages);

// ---- SVG timeline --------------------------------------------------------------------------

struct TimelineOptions {
  int width_px = 1200;     // whole image, [200, 100000]
  int row_height_px = 36;  // one row per stage, [8, 1000]
  std::string title;       // empty: "conveyor pipeline timeline"

  // Throws conveyor::Error(kInvalidArgument) for sizes outside the ranges above.
  void validate() const;
};

// A self-contained SVG document: one row per stage, time on the x axis (tick labels in ms from
// the first event), one <rect class="ev"> per event coloured by kind (compute per phase, sample,
// thin and lighter send/recv, a narrow marker for commit), micro-batch numbers inside compute
// boxes wide enough to hold them, a legend and a title. Idle time (bubbles) is empty space.
std::string timeline_svg(const Trace& trace, int n_stages, const TimelineOptions& options = {});

// Writes timeline_svg(...) to `path`; throws conveyor::Error naming the path when the file cannot
// be written.
void write_timeline_svg(const std::filesystem::path& path, const Trace& trace, int n_stages,
                        const TimelineOptions& options = {});

// ---- stage balance ---------------------------------------------------------------------------

struct StageBalance {
  int stage = 0;
  double busy_us = 0.0;   // time covered by Compute and Sample events on this stage
  double idle_us = 0.0;   // span_us - busy_us
  int64_t n_compute = 0;  // Compute events on this stage
};

// Busy time counts Compute and Sample only: Recv/Send are waiting for or handing over
// activations (on a host link a Recv mostly measures the upstream stage's compute, i.e. the
// bubble itself) and Commit is bookkeeping, so counting them would hide the bubbles this report
// exists to show. Overlapping busy events on one stage are counted once (union of intervals).
//
// span_us runs from the earliest event start to the latest event end of the whole trace, on all
// stages; for a trace of several steps it covers all of them, including the gaps between steps.
// Pass one step's events (or use balance_report_for_phase) to compare with the ideal.
//
// Nothing divides by zero: with no events (span 0) imbalance and bubble_fraction are 0; with
// events but no busy time imbalance is 0 and bubble_fraction 1.
struct BalanceReport {
  std::vector<StageBalance> stages;  // one per stage, in stage order
  double span_us = 0.0;
  double imbalance = 0.0;              // max busy / mean busy over stages (1 = balanced)
  double bubble_fraction = 0.0;        // measured: 1 - sum busy / (S * span)
  double ideal_bubble_fraction = 0.0;  // (S-1)/(M+S-1): GPipe with equal stages and micro-batches
  int n_micro_batches = 0;             // M used for the ideal
};

// n_micro_batches (M) must be >= 1.
BalanceReport balance_report(const Trace& trace, int n_stages, int n_micro_batches);

// The same over the events of one phase only (its span runs from that phase's first event to its
// last one).
BalanceReport balance_report_for_phase(const Trace& trace, int n_stages, int n_micro_batches,
                                       Phase phase);

// A readable table (stage, busy ms, idle ms, busy %, computes) followed by the span, the
// imbalance and the bubble fraction measured vs. ideal. Ends with a newline.
std::string format_balance_report(const BalanceReport& report);

}  // namespace conveyor
