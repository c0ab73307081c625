// Pipeline: S stage workers (one thread each, each owning its StageBackend) joined by ordered
// links, running one validated StepPlan at a time behind a KV commit barrier.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/link.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/step_plan.hpp"
#include "conveyor/trace.hpp"

namespace conveyor {

struct PipelineOptions {
  std::chrono::milliseconds link_timeout{120'000};
  int link_capacity = 2;  // messages in flight per link (2 = double-buffered)
  // The link from stage s to s + 1 (e.g. NCCL between GPUs); unset: in-process HostLinks of
  // link_capacity, which carry host rows or device handles.
  std::function<std::unique_ptr<Link>(int from_stage)> make_link;
};

struct StepResult {
  std::vector<SampledToken> tokens;  // from the last stage, in sampling order
  std::vector<LogitsRow> logits;     // when StepContext::capture_logits
};

// Thread safety: run_step, truncate and take_trace are called from one thread (the engine's).
class Pipeline {
 public:
  Pipeline(std::vector<std::unique_ptr<StageBackend>> stages, const PipelineOptions& options);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  int n_stages() const { return static_cast<int>(workers_.size()); }
  const PipelineOptions& options() const { return options_; }

  // Validates `plan` (the runtime never executes an unvalidated plan), runs every stage's
  // program, and — only when every stage reached its Commit — commits the step's KV writes on
  // all stages. On any failure every stage is aborted (links cancelled), every KV cache rolls
  // back to its last commit, and the first failure is rethrown with its stage and instruction
  // named; the pipeline stays usable. `ctx` must stay unchanged until run_step returns.
  StepResult run_step(const StepPlan& plan, const StepContext& ctx);

  // Keeps the first `length` committed positions of a sequence slot on every stage (0 frees it).
  // Between steps only.
  void truncate(int32_t seq, int64_t length);
  // Committed KV length of `seq` on `stage`.
  int64_t committed(int stage, int32_t seq) const;

  // Events recorded since the last call.
  Trace take_trace();

 private:
  struct Worker;
  void worker_loop(Worker& worker);
  void run_program(Worker& worker, const StepPlan& plan, const StepContext& ctx);
  void abort_step();

  PipelineOptions options_;
  std::chrono::steady_clock::time_point epoch_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::unique_ptr<Link>> links_;  // links_[s] carries stage s -> s+1

  std::mutex mutex_;
  std::condition_variable job_ready_;
  std::condition_variable job_done_;
  uint64_t generation_ = 0;
  int n_done_ = 0;
  bool stopping_ = false;
  const StepPlan* plan_ = nullptr;
  const StepContext* ctx_ = nullptr;
};

}  // namespace conveyor
