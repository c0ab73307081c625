// A pipeline that spans processes: each process runs a contiguous slice of the stages. The
// process that runs stage 0 (the leader) plans every step; the others (followers) run exactly
// what it sends them. These are the two sides' contracts with a transport (MPI:
// src/dist/mpi_remote.hpp); the Pipeline itself knows nothing of MPI.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "backend/stage_backend.hpp"
#include "conveyor/error.hpp"
#include "conveyor/step_plan.hpp"
#include "conveyor/trace.hpp"

namespace conveyor {

struct StepResult {
  std::vector<SampledToken> tokens;  // from the last stage, in sampling order
  std::vector<LogitsRow> logits;     // of the sequences whose StepContext::logits asks
};

// What one process tells the leader once a step's programs have finished on all its stages.
struct StepReport {
  struct Failure {
    int stage = 0;
    ErrorCode code = ErrorCode::kInternal;
    std::string message;  // names the stage, instruction and step
  };
  int rank = 0;
  uint64_t ticket = 0;
  int64_t step = 0;
  int first_stage = 0;
  int n_stages = 0;  // stages of the process: [first_stage, first_stage + n_stages)
  std::vector<Failure> failures;
  std::optional<StepResult> result;  // when the process runs the last stage
  std::vector<int64_t> busy_ns;      // per stage of the process, since it started
  Trace trace;                       // when the step records one (times on the process' clock)
  // A link failed here: every process must cancel its links (and drain them before the next
  // step).
  bool links_cancelled = false;
  // The process' pipeline can no longer run steps: why.
  std::string broken;
};

// The leader's view of the stages that run elsewhere. Every call but start() comes from the
// thread that drives the pipeline, in the order the leader queues the same jobs on its own
// stages, so every process runs every job in one order.
class RemoteStages {
 public:
  virtual ~RemoteStages() = default;
  // Begins delivering reports (on a thread of the transport). `on_failure` gets an error when a
  // process stops answering (nothing heard for the link timeout while one of its steps is in
  // flight) or the transport fails; the pipeline then stops.
  virtual void start(std::function<void(StepReport&&)> on_report,
                     std::function<void(std::exception_ptr)> on_failure) = 0;
  virtual void submit(uint64_t ticket, const StepPlan& plan, const StepContext& ctx) = 0;
  virtual void decide(uint64_t ticket, bool commit) = 0;
  virtual void truncate(int32_t seq, int64_t length) = 0;
  virtual void release(int32_t seq) = 0;
  // A link failed: every follower cancels its links and fails its steps in flight. Called (from
  // any thread) before the failure can complete a step here, so it reaches every follower before
  // the decisions and steps that follow it.
  virtual void cancel_links() = 0;
  // Nothing runs anywhere after a cancellation and the leader reset its links: the followers
  // reset theirs (Link::reset) before the next step.
  virtual void reset_links() = 0;
  // Tells the followers to stop following and stops delivering reports. Idempotent.
  virtual void stop() = 0;
};

}  // namespace conveyor
