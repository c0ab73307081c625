// Pipeline: S stage workers (one thread each, each owning its StageBackend) joined by ordered
// links. Validated StepPlans are submitted to it and run in submission order on every stage;
// several may be in flight at once (one per cohort), each committed or rolled back on its own.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "backend/link.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/step_plan.hpp"
#include "conveyor/trace.hpp"
#include "runtime/remote.hpp"

namespace conveyor {

struct PipelineOptions {
  std::chrono::milliseconds link_timeout{120'000};
  int link_capacity = 2;  // messages in flight per link (2 = double-buffered)
  // The link from stage s to s + 1 (e.g. NCCL between GPUs); unset: in-process HostLinks of
  // link_capacity, which carry host rows or device handles. Across processes it is also asked
  // for the links into and out of this process' stages.
  std::function<std::unique_ptr<Link>(int from_stage)> make_link;

  // A pipeline that spans processes (src/runtime/remote.hpp): this process runs stages
  // [first_stage, first_stage + stages.size()) of n_stages (0: all of them, here).
  int first_stage = 0;
  int n_stages = 0;
  // The leader (first_stage 0): the stages after its own run elsewhere.
  std::shared_ptr<RemoteStages> remote;
  // A follower: called on a stage worker once a step has finished on every stage here; the
  // step then waits for decide().
  std::function<void(StepReport&&)> on_local_done;
};

// A finished step: committed on every stage (error unset), or rolled back on every stage.
struct StepOutcome {
  uint64_t ticket = 0;
  int64_t step = 0;
  int32_t cohort = 0;
  StepResult result;
  std::exception_ptr error;  // names the failing stage and instruction
  // The step failed only because another step's link failure cancelled every link while it was
  // in flight; running it again (its KV is back at its last commit) may well succeed.
  bool collateral = false;
  double seconds = 0.0;  // from submission to completion on the last stage
};

// Thread safety: every method is called from one thread (the engine's scheduler).
class Pipeline {
 public:
  Pipeline(std::vector<std::unique_ptr<StageBackend>> stages, const PipelineOptions& options);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  int n_stages() const { return n_stages_; }
  // The stages that run in this process: [first_stage(), first_stage() + local_stages()).
  int first_stage() const { return first_stage_; }
  int local_stages() const { return static_cast<int>(workers_.size()); }
  const PipelineOptions& options() const { return options_; }

  // Validates `plan` on its own and against the steps in flight (ScheduleChecker: none of its
  // sequences may be in one, each stays in its cohort), then queues every stage's program behind
  // everything submitted before and returns. Throws conveyor::Error(kInvalidArgument) and queues
  // nothing when the plan may not run. The spans in `ctx` must stay valid, and their entries of
  // the plan's sequences unchanged, until the step's outcome is taken.
  uint64_t submit(StepPlan plan, const StepContext& ctx);
  // Steps submitted whose outcome has not been taken.
  size_t in_flight() const { return checker_.steps_in_flight(); }
  // Set once a stage could not apply a commit, rollback or truncation: every later call throws
  // it, and the stages' KV caches can no longer be trusted.
  std::exception_ptr broken() const;
  // Blocks until a step in flight has finished on every stage and returns its outcome, in
  // completion order. All stages reached Commit: the step's KV writes are committed on every
  // stage before anything submitted later runs there. A failure anywhere: the step's writes are
  // rolled back on every stage, and the other steps in flight carry on — unless a link failed,
  // which cancels every link and fails every step in flight (collateral) before the links are
  // reset. Throws conveyor::Error(kInvalidArgument) when nothing is in flight.
  StepOutcome wait_any();
  // submit() and wait for that step, with nothing else in flight; rethrows its failure.
  StepResult run_step(const StepPlan& plan, const StepContext& ctx);
  // A follower: commits (or rolls back) the step `ticket` on this process' stages, as the
  // leader decided once every process had reported it.
  void decide(uint64_t ticket, bool commit);
  // A follower: a link failed in another process. Cancels every link here and fails the steps
  // in flight; the links are drained back in order before the next step (Link::reset).
  void cancel_links();
  // A follower: the leader reset its links once nothing ran anywhere; reset this process' links
  // too. Throws (and the pipeline stops) when a link cannot be brought back in order.
  void reset_cancelled_links();

  // Keeps the first `length` committed positions of a sequence slot on every stage (0 frees the
  // slot, which may then join another cohort). Runs behind everything submitted so far; the slot
  // must not be in a step in flight.
  void truncate(int32_t seq, int64_t length);
  // The slot's request ended: its next steps may belong to another cohort (its KV is kept, for
  // a successor that shares a prefix). The slot must not be in a step in flight.
  void release(int32_t seq);
  // Compute + sample time of each stage so far.
  std::vector<double> busy_seconds() const;
  // Committed KV length of `seq` on `stage` (one of this process'), once every stage has run
  // what is queued.
  int64_t committed(int stage, int32_t seq);

  // Events of the steps whose outcomes were taken since the last call.
  Trace take_trace();

 private:
  struct Flight;
  struct Job;
  struct Worker;
  void worker_loop(Worker& worker);
  void run_program(Worker& worker, Flight& flight);
  void abort_all(Flight& cause);
  void cancel_flights();      // with mutex_ held: links cancelled, the steps in flight fail
  void cancel_each_link();    // wakes whatever waits on this process' links
  int expected_done() const;  // stages that finish a step in this process' view
  void enqueue_all(const std::function<Job()>& make);
  void drain();
  void check_healthy() const;
  // Resets every link once nothing runs after a cancellation; the first failure, if any.
  std::exception_ptr reset_links();
  bool running() const;  // some step in flight has not finished on every stage
  // A leader: a follower's report, or its transport's failure.
  void on_report(StepReport&& report);
  void on_remote_failure(std::exception_ptr error);
  StepReport local_report(const Flight& flight) const;
  Worker* local_worker(int stage) const;

  PipelineOptions options_;
  int n_stages_ = 0;
  int first_stage_ = 0;
  std::chrono::steady_clock::time_point epoch_;
  std::vector<std::unique_ptr<Worker>> workers_;
  // links_[s] carries stage s -> s+1; null where neither end runs here.
  std::vector<std::unique_ptr<Link>> links_;
  std::vector<int64_t> remote_busy_ns_;  // by stage, from the followers' reports
  ScheduleChecker checker_;
  uint64_t next_ticket_ = 1;

  // Guards the worker queues, the flights' progress and everything below.
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;             // a worker's queue grew, or stopping
  std::condition_variable progress_;               // a job finished (flight completion, drain)
  std::vector<std::shared_ptr<Flight>> flights_;   // submitted, outcome not taken
  std::deque<std::shared_ptr<Flight>> completed_;  // finished on every stage, in order
  bool links_cancelled_ = false;  // a link failure cancelled them; reset once nothing runs
  std::exception_ptr broken_;     // a commit, rollback or truncate failed on a stage (or a
                                  // link across processes failed)
  bool stopping_ = false;
  Trace trace_;
};

}  // namespace conveyor
