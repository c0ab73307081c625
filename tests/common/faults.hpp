// Fault injection for tests: decorators of stage backends and links that throw at one
// instruction of one step, installed through PipelineOptions::make_link and the stage list, or
// through the Engine's test hooks (src/engine/engine_hooks.hpp). The runtime itself has no fault
// hook.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "backend/link.hpp"
#include "backend/stage_backend.hpp"
#include "engine/engine_hooks.hpp"

namespace conveyor::test {

// Throw inside `stage` when it starts instruction `instruction` (index into its program) of step
// `step` (-1: every step). Instructions that call a backend or a link can fail: Recv, Compute,
// Send and Sample; the final Commit only marks the stage done and cannot.
struct FaultPlan {
  int stage = -1;  // disabled while < 0
  int64_t step = -1;
  int instruction = -1;
  // Instead: `stage` fails to commit `step` (after every stage finished it), which leaves the
  // stages' KV caches out of step: the pipeline is broken for good.
  bool commit = false;
};

// Shared by the decorators of one pipeline: counts each stage's instructions per step (a stage's
// program runs in order on its worker, so its calls arrive in program order).
class FaultInjector : public std::enable_shared_from_this<FaultInjector> {
 public:
  static std::shared_ptr<FaultInjector> create(FaultPlan plan = {});

  void set(FaultPlan plan);  // between steps
  // Counts one instruction of `stage` in `step`; throws Error(kInternal, "injected fault") when
  // it is the planned one.
  void before(int stage, int64_t step);
  // Throws Error(kInternal, "injected commit fault") when the plan is a commit fault here.
  void before_commit(int stage, int64_t step);

  std::unique_ptr<StageBackend> wrap_stage(int stage, std::unique_ptr<StageBackend> inner);
  std::unique_ptr<Link> wrap_link(int from, std::unique_ptr<Link> inner);
  // Hooks that wrap every stage and link an Engine builds.
  detail::EngineHooks hooks();

 private:
  explicit FaultInjector(FaultPlan plan) : plan_(plan) {}
  struct Count {
    int64_t step = -1;
    int next = 0;
  };
  std::mutex mutex_;
  FaultPlan plan_;
  std::map<int, Count> counts_;
};

}  // namespace conveyor::test
