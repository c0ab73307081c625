// StepPlan: what every pipeline stage does in one engine step — micro-batches of sequence
// chunks and one ordered program of Recv/Compute/Send/Sample/Commit per stage — and validate(),
// which proves the pipeline-parallel invariants (docs/architecture.md, section 1) on a plan.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace conveyor {

// Token positions [begin, end) of sequence `seq` (an engine slot) computed in one micro-batch.
// `sample`: the last stage samples the next token after position end-1 (set on the final
// prefill chunk of a sequence and on every decode token).
struct SeqChunk {
  int32_t seq = 0;
  int64_t begin = 0;
  int64_t end = 0;
  bool sample = false;

  int64_t n_tokens() const { return end - begin; }
  bool operator==(const SeqChunk&) const = default;
};

// The unit that flows through the pipeline: every stage computes it once, in layer order.
// Its activations are [n_tokens(), hidden], rows in chunk order, positions ascending per chunk.
struct MicroBatch {
  int32_t id = 0;
  int64_t step = 0;  // the engine step it belongs to; a valid plan holds one step only
  std::vector<SeqChunk> chunks;

  int64_t n_tokens() const;
  bool has_sample() const;  // any chunk with sample = true
  bool operator==(const MicroBatch&) const = default;
};

enum class Phase { kPrefill, kDecode };

enum class OpKind {
  kRecv,     // take micro-batch m's activations from the link (s-1 -> s); never on stage 0
  kCompute,  // run this stage's layers on m (stage 0 embeds m's token ids itself)
  kSend,     // put m's activations on the link (s -> s+1); never on the last stage
  kSample,   // last stage only, after Compute(m): final norm, lm_head, sample the chunks
  kCommit,   // ends every program: the step's KV writes become visible (a barrier over stages)
};

struct Instruction {
  OpKind kind = OpKind::kCompute;
  int32_t micro_batch = -1;  // -1 for Commit

  bool operator==(const Instruction&) const = default;
};

// A participating sequence's committed KV length at the start of the step: its chunks in
// this step tile [committed, committed + n) for some n >= 1.
struct SeqState {
  int32_t seq = 0;
  int64_t committed = 0;

  bool operator==(const SeqState&) const = default;
};

struct ValidateOptions {
  // Messages a link holds before a Send blocks (the host link is double-buffered).
  int link_capacity = 2;
};

// Execution contract for the runtime: stage s runs programs[s] in order. Recv(m) on stage s
// pairs FIFO with Send(m) on stage s-1 over the link s-1 -> s (the k-th Recv receives the k-th
// Send). Commit is the last instruction of every program; the step's KV writes become visible
// only once every stage has reached it.
struct StepPlan {
  int64_t step = 0;
  Phase phase = Phase::kPrefill;
  int n_stages = 1;
  // The group of sequences this step advances (cohort decode keeps several steps in flight, one
  // per cohort; strict decode has one cohort, 0). A sequence belongs to one cohort from its
  // first step until its slot is released.
  int32_t cohort = 0;
  std::vector<SeqState> seqs;
  std::vector<MicroBatch> micro_batches;
  std::vector<std::vector<Instruction>> programs;  // [n_stages]

  int64_t n_tokens() const;
  // Multi-line, human-readable: the micro-batches and one line per stage program.
  std::string describe() const;
  // Same as conveyor::validate(*this, options).
  void validate(const ValidateOptions& options = {}) const;

  bool operator==(const StepPlan&) const = default;
};

// Throws conveyor::Error(kInvalidArgument) when `plan` breaks a pipeline-parallel invariant.
// The message starts with "step plan <step> is invalid (<rule>):" where rule is one of
//   "plan shape"           stage count, programs, ids, chunk ranges or plan.seqs malformed
//   "layer dependency"     a micro-batch skips a stage, runs twice, or runs before it arrived
//   "step dependency"      a micro-batch of another step, or Commit missing / not last /
//                          repeated, or (decode) one sequence twice in one step
//   "causal/KV order"      a sequence's chunks leave a gap, overlap, or run out of position
//                          order on a stage
//   "communication order"  sends and receives of a link do not pair FIFO
//   "deadlock"             the programs cannot all finish with bounded links
//   "sampling"             Sample missing, misplaced, or a decode chunk that does not sample
// followed by the stage, micro-batch and sequence involved and what to change.
void validate(const StepPlan& plan, const ValidateOptions& options = {});

// --- several steps in flight ------------------------------------------------------------------
// Cohort decode keeps up to one step per cohort in the pipeline at once. Every stage runs the
// programs of the steps in flight in the order they were submitted; links stay FIFO across
// steps. What the coordinator does, in order:
struct ScheduleEvent {
  enum class Kind {
    kSubmit,    // queue the programs of the plan with this `step` on every stage
    kComplete,  // wait until `step` finished on every stage, then commit it (its outcome taken)
    kRelease,   // free sequence slot `seq` (its request ended): it may join another cohort
  };
  Kind kind = Kind::kSubmit;
  int64_t step = -1;  // kSubmit, kComplete
  int32_t seq = -1;   // kRelease
  bool operator==(const ScheduleEvent&) const = default;
};

struct PipelineSchedule {
  int n_stages = 1;
  std::vector<StepPlan> plans;  // distinct step numbers; submitted in `events` order
  std::vector<ScheduleEvent> events;
};

// Throws conveyor::Error(kInvalidArgument) when the schedule breaks an invariant. The message
// starts with "schedule is invalid (<rule>):" — rule is one of
//   "plan shape"       a plan for another stage count, a step number submitted twice or never
//                      submitted, an event out of place (completing a step not in flight)
//   "step dependency"  a step names a sequence whose previous step has not completed (its
//                      commit precedes the next step on every stage), or steps of a sequence
//                      out of order
//   "cohort"           a sequence in steps of two cohorts without being released in between
//   "deadlock"         the stages cannot run the submitted programs with bounded links
// — or with a plan's own "step plan <step> is invalid (...)" message.
void validate(const PipelineSchedule& schedule, const ValidateOptions& options = {});

// The runtime's incremental form of the schedule rules on steps in flight and cohorts: the
// pipeline calls it on every submission, completion and release.
class ScheduleChecker {
 public:
  // Throws (rule "step dependency" or "cohort") without recording anything when `plan` may not
  // be submitted now.
  void submit(const StepPlan& plan);
  // The step finished: committed (its number now orders the sequences' next steps), or failed
  // and rolled back (its number may be used again).
  void complete(int64_t step, bool committed = true);
  void release(int32_t seq);
  bool in_flight(int32_t seq) const;
  size_t steps_in_flight() const { return in_flight_.size(); }

 private:
  struct Member {
    int32_t cohort = 0;
    int64_t last_step = -1;       // the latest step committed with it
    int64_t in_flight_step = -1;  // -1: none in flight
  };
  std::map<int32_t, Member> members_;                  // by sequence slot, until released
  std::map<int64_t, std::vector<int32_t>> in_flight_;  // step -> its sequences
};

std::string_view to_string(Phase phase);
std::string_view to_string(OpKind kind);
// "recv(m3)", "commit".
std::string to_string(const Instruction& instruction);

}  // namespace conveyor
