// FaultInjection: a testing hook that makes one stage throw at one instruction of a step.
#pragma once

#include <cstdint>

namespace conveyor {

// Throw inside `stage` just before it executes instruction `instruction` (index into its
// program) of step `step` (-1 matches every step). Disabled while stage < 0.
struct FaultInjection {
  int stage = -1;
  int64_t step = -1;
  int instruction = -1;
};

}  // namespace conveyor
