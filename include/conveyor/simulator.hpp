// Simulator: replays validated StepPlans (built by the runtime's own plan builders) with the
// cost model's unit and link times, producing a predicted Trace that observe/ can chart; and whole
// generations planned by the SchedulePolicy, strict or with cohorts in flight together.
#pragma once

#include <cstdint>
#include <vector>

#include "conveyor/cost_model.hpp"
#include "conveyor/partition.hpp"
#include "conveyor/schedule.hpp"
#include "conveyor/step_plan.hpp"
#include "conveyor/trace.hpp"

namespace conveyor {

struct SimulatorOptions {
  // The device of each stage and the links between them; a device with a profile uses its fits
  // for units, links and the step overhead.
  Topology topology;
  int link_capacity = 2;    // messages in flight per link, as the runtime's HostLink
  bool all_logits = false;  // the head projects every row (GenerateOptions::all_logits)
  // Cores shared by every stage (stages as threads on one host): while more stages compute than
  // there are cores, each progresses at host_cores / busy stages. 0: every stage has its own
  // device; -1: the stage-0 device profile's host_cores (0 without a profile).
  double host_cores = -1.0;

  void validate(int n_stages) const;
};

// The predicted execution of one step. Instruction semantics match the runtime: stage s runs
// its program in order; Compute takes its layers' time (plus the embedding on stage 0); Sample
// the head's; Send blocks while the link holds link_capacity unreceived messages and then takes
// bytes / bandwidth, the message arriving link latency later; Recv waits for the arrival.
// Events are replayed in time order, so compute on a shared host can slow down while several
// stages are busy (SimulatorOptions::host_cores).
struct SimulatedStep {
  Trace trace;                 // one event per instruction, times from start_us
  double seconds = 0.0;        // first start to last Commit, plus the step overhead
  std::vector<double> busy_s;  // Compute + Sample time per stage
};

// Validates `plan` (the same validate() the runtime calls) and replays it. start_us places the
// step on the trace's time axis. Throws conveyor::Error(kInvalidArgument) for a plan that does
// not match the partition or fails validation.
SimulatedStep simulate_step(const StepPlan& plan, const Partition& partition,
                            const CostModel& model, const SimulatorOptions& options,
                            double start_us = 0.0);

// A batch of equal prompts planned as the Engine's scheduler plans generate(): with strict
// decode, one prefill step for all prompts and then decode steps one at a time (the step
// dependency); with cohort decode, the sequences split into cohorts, each with its own prefill
// and decode steps, the next step of a cohort submitted when its previous one completed (plus
// the profile's step overhead). Every plan comes from plan_step() with `policy`.
struct GenerationShape {
  int32_t n_seqs = 1;
  int64_t prompt_tokens = 512;
  int64_t new_tokens = 0;  // decode steps per cohort = new_tokens - 1 (prefill samples the first)
  SchedulePolicy policy;

  void validate() const;
};

struct SimulatedGeneration {
  Trace trace;  // every step
  // Wall time while any prefill (decode) step was in flight; overlapping steps count once.
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  int prefill_micro_batches = 0;     // of the first prefill step
  int decode_micro_batches = 0;      // of the first decode step (0 when none)
  std::vector<double> step_seconds;  // each step from submission to completion, in completion order
  // The plans and the coordinator's submissions and completions, validated as a schedule.
  PipelineSchedule schedule;
};

SimulatedGeneration simulate_generation(const GenerationShape& shape, const Partition& partition,
                                        const CostModel& model, const SimulatorOptions& options);

}  // namespace conveyor
