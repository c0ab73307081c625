// Scheduler: continuous batching over the pipeline. Requests arrive from any thread; between
// steps the scheduling thread admits waiting ones into free KV slots (first come, first served),
// plans one step per idle cohort with the SchedulePolicy, submits it, takes the next finished
// step, streams its tokens and retires finished requests.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "conveyor/engine.hpp"
#include "runtime/pipeline.hpp"

namespace conveyor {

struct SchedulerOptions {
  SchedulePolicy policy;
  int32_t slots = 8;
  int64_t max_context = 0;
  int32_t max_waiting = 256;
};

// How generate() places its requests.
struct Admission {
  int32_t slot = -1;          // >= 0: this slot only (request i of a batch in slot i)
  bool reuse_prefix = false;  // keep the slot's committed prefix the prompt shares
};

// A step with its wall-clock span, for phase timings.
struct StepRecord {
  StepStats stats;
  std::chrono::steady_clock::time_point start, end;
  int64_t sampled_tokens = 0;
};

class Scheduler {
 public:
  Scheduler(Pipeline& pipeline, const ModelConfig& config, const SchedulerOptions& options);
  ~Scheduler();

  // Thread-safe. Throws as Engine::submit says.
  RequestId submit(Request request, RequestCallback on_event, Admission admission = {});
  bool cancel(RequestId id);
  void stop_accepting();
  void start_accepting();  // after stop_accepting (a restarted loop)
  // Cancels every waiting request and marks every running one (they end at the next step
  // boundary).
  void cancel_all(const std::string& reason);

  // Scheduling thread only.
  bool run_once();
  // Blocks until a request or cancellation arrives, or `timeout`.
  void wait_for_work(std::chrono::milliseconds timeout);
  bool idle() const;
  void set_record_trace(bool on) { record_trace_ = on; }
  std::vector<StepRecord> take_step_records();
  // Ends every request — running, waiting and submitted later — with kError and `error`: the
  // pipeline broke, so no step can run any more. Waits for the steps in flight first when the
  // pipeline can still report them.
  void fail_all(const Error& error);
  bool failed() const;

  EngineMetrics metrics() const;  // thread-safe

 private:
  struct Waiting {
    RequestId id = 0;
    Request request;
    RequestCallback on_event;
    Admission admission;
  };
  struct Live;
  struct Cohort {
    std::vector<int32_t> slots;
    bool in_flight = false;
    bool retried = false;  // its last step was re-run after a collateral failure
  };
  struct InFlight {
    int32_t cohort = 0;
    std::vector<SeqWork> work;
    StepStats stats;
    std::chrono::steady_clock::time_point start;
  };

  void check_request(const Request& request) const;
  void take_inbox();
  void admit();
  void install(Waiting& waiting, int32_t slot);
  void submit_steps();
  void complete(StepOutcome outcome);
  void deliver_token(Live& live, int32_t token);
  void finish(Live& live, FinishReason reason, const Error* error = nullptr,
              std::optional<int32_t> token = std::nullopt);
  void end_waiting(Waiting& w, FinishReason reason, const Error& error);
  int32_t free_slot(const Waiting& w) const;

  Pipeline& pipeline_;
  const ModelConfig& config_;
  const SchedulerOptions options_;
  const int n_cohorts_;

  // Inbox: shared with submitting threads.
  mutable std::mutex inbox_mutex_;
  std::condition_variable inbox_changed_;
  std::deque<Waiting> waiting_;
  std::set<RequestId> cancels_;
  bool accepting_ = true;
  std::optional<Error> failure_;  // set by fail_all: the engine cannot run steps any more
  RequestId next_id_ = 1;
  std::set<RequestId> live_ids_;  // holding a slot

  // Scheduling thread only.
  std::vector<std::unique_ptr<Live>> by_slot_;
  std::vector<std::vector<int32_t>> tokens_;  // per slot; a free slot keeps its committed tokens
  std::vector<SamplingParams> sampling_;
  std::vector<LogitsCapture> logits_;
  std::vector<int64_t> slot_committed_;  // committed KV of a free slot
  std::vector<Cohort> cohorts_;
  std::map<uint64_t, InFlight> in_flight_;
  int64_t next_step_ = 0;
  bool record_trace_ = false;
  std::vector<StepRecord> records_;

  // Counters for metrics(), guarded by inbox_mutex_.
  EngineMetrics counters_;
  std::chrono::steady_clock::time_point opened_;
};

}  // namespace conveyor
