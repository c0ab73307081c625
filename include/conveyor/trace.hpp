// TraceEvent: one executed pipeline instruction, as recorded by the stage workers.
#pragma once

#include <cstdint>
#include <vector>

#include "conveyor/step_plan.hpp"

namespace conveyor {

struct TraceEvent {
  int stage = 0;
  OpKind kind = OpKind::kCompute;
  int32_t micro_batch = -1;  // -1 for Commit
  int64_t step = 0;
  Phase phase = Phase::kPrefill;
  int64_t n_tokens = 0;   // tokens of the micro-batch (0 for Commit)
  double start_us = 0.0;  // microseconds since the engine was opened
  double end_us = 0.0;
};

using Trace = std::vector<TraceEvent>;

}  // namespace conveyor
