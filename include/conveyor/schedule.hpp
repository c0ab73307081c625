// SchedulePolicy: every planning decision of a step in one place — how prompts are chunked, how
// many micro-batches a step has, how running sequences split into decode cohorts and how much
// prompt a step takes while others decode. Pure functions from (policy, stages, sequence states)
// to plans, used alike by the Engine, the simulator, conveyor-plan and conveyor-bench, so the
// simulator predicts the plans the engine runs.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/step_plan.hpp"

namespace conveyor {

enum class ChunkMode {
  kAuto,   // chunk only when it helps: see prefill_chunk_tokens()
  kNever,  // whole prompts, always
  kFixed,  // chunks of at most Chunking::tokens
};

// How prompts are split into chunks (TeraPipe-style token slices of one sequence).
struct Chunking {
  ChunkMode mode = ChunkMode::kAuto;
  int64_t tokens = 0;  // kFixed: the chunk size, >= 1

  static Chunking automatic() { return {}; }
  static Chunking never() { return {.mode = ChunkMode::kNever}; }
  static Chunking fixed(int64_t tokens) { return {.mode = ChunkMode::kFixed, .tokens = tokens}; }
  // "auto", "never" or a chunk size ("256"); throws conveyor::Error(kInvalidArgument) naming the
  // text and the accepted forms.
  static Chunking parse(std::string_view text);
  std::string to_string() const;  // the form parse() reads
  bool operator==(const Chunking&) const = default;
};

enum class DecodeMode {
  // All running sequences decode in one step at a time (micro-batched across the stages): a
  // step starts only after the previous one committed everywhere.
  kStrict,
  // Running sequences are split into up to `cohorts` disjoint groups, each with its own steps:
  // while one cohort's step runs on stage s, another's runs on stage s-1. Each cohort obeys the
  // step dependency on its own.
  kCohorts,
};

std::string_view to_string(DecodeMode mode);
// "strict" or "cohorts"; throws conveyor::Error(kInvalidArgument) otherwise.
DecodeMode parse_decode_mode(std::string_view text);

struct SchedulePolicy {
  int prefill_micro_batches = 0;  // 0: one per stage (enough to fill the pipeline)
  // 0: min(stages, sequences) in strict mode; one per cohort step in cohort mode (the cohorts
  // fill the pipeline).
  int decode_micro_batches = 0;
  Chunking chunking;
  DecodeMode decode_mode = DecodeMode::kStrict;
  int cohorts = 0;  // kCohorts: 0 = one per stage; at most the stage count

  // Smallest chunk automatic chunking makes, and the prompt tokens a step takes while other
  // sequences decode under automatic chunking.
  static constexpr int64_t kMinAutoChunkTokens = 16;
  static constexpr int64_t kAutoStepPromptTokens = 256;

  // Throws conveyor::Error(kInvalidArgument) naming the field, value, limit and fix.
  void validate() const;
  bool operator==(const SchedulePolicy&) const = default;
};

// What the last stage samples from: only the chunks that end a prompt, or every micro-batch (the
// caller wants logits of every position).
enum class LogitsRows { kSampled, kAll };

// The chunk size of a prefill step over prompts with these new-token counts (0: whole prompts).
// kFixed: its size. kNever: 0. kAuto: chunk only when there are fewer prompts than prefill
// micro-batches, so that even one long prompt fills the pipeline — each prompt gets about M/n
// chunks, none smaller than kMinAutoChunkTokens.
int64_t prefill_chunk_tokens(const SchedulePolicy& policy, int n_stages,
                             std::span<const int64_t> new_tokens);

// The prompt tokens one step may take while other sequences decode in it (0: no limit). kFixed:
// the chunk size; kAuto: kAutoStepPromptTokens; kNever: no limit.
int64_t step_prompt_budget(const SchedulePolicy& policy);

// Cohorts a decode with `n_running` sequences uses: 1 in strict mode, else
// min(cohorts or n_stages, n_stages, n_running) (at least 1).
int cohort_count(const SchedulePolicy& policy, int n_stages, int64_t n_running);

// One sequence's share of a step: positions [committed, committed + n_tokens). A decode is one
// token that samples; a prompt share samples only when it reaches the prompt's end.
struct SeqWork {
  int32_t seq = 0;
  int64_t committed = 0;
  int64_t n_tokens = 1;
  bool sample = true;
  bool prompt = false;  // a share of a prompt (else a decode: one token that samples)
  bool operator==(const SeqWork&) const = default;
};

// The plan of one step over `work` (each sequence once). Only decodes (every share one sampled
// token): a decode plan of min(decode micro-batches, sequences) groups. Otherwise a prefill plan:
// prompts chunked as prefill_chunk_tokens() says when the step holds prompts only; with decodes
// in it too, sequence groups balanced by tokens (the caller already bounded the prompt tokens by
// step_prompt_budget()). `cohort` is recorded on the plan.
StepPlan plan_step(const SchedulePolicy& policy, int n_stages, int64_t step,
                   const std::vector<SeqWork>& work, LogitsRows logits = LogitsRows::kSampled,
                   int32_t cohort = 0);

// A waiting prompt's progress in continuous batching: `done` of its `prompt` tokens are in the
// KV cache (reused or computed).
struct PromptProgress {
  int32_t seq = 0;
  int64_t done = 0;
  int64_t prompt = 0;
};

// The work of one step of a group of sequences (a cohort, or everything in strict mode): one
// token for each decoding sequence, and the next shares of the unfinished prompts in order.
// With no decodes, every prompt comes whole (the plan chunks them); with decodes, the prompts
// share step_prompt_budget() tokens first come, first served.
std::vector<SeqWork> step_work(const SchedulePolicy& policy, const std::vector<SeqState>& decoding,
                               const std::vector<PromptProgress>& prompts);

// The cohort a newly admitted sequence joins: the one with the fewest sequences (ties: the
// lowest index). `sizes` holds each cohort's current count.
int pick_cohort(std::span<const int64_t> sizes);

}  // namespace conveyor
