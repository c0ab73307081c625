// Plan builders: pure functions from the step's sequences to a StepPlan — prefill by sequence
// groups, prefill by token chunks, decode by sequence groups — plus their grouping helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "conveyor/step_plan.hpp"

namespace conveyor {

// One sequence's share of a prefill step: positions [committed, committed + n_tokens).
struct PrefillSeq {
  int32_t seq = 0;        // engine slot, >= 0, unique in the step
  int64_t committed = 0;  // KV length already committed (0 for a fresh prompt)
  int64_t n_tokens = 0;   // new tokens this step, >= 1
  bool sample = true;     // sample the next token after the last one (false: the prompt
                          // continues in a later step)
};

// Which micro-batches get a Sample on the last stage.
enum class SampleRule {
  kWhereChunksSample,  // only micro-batches holding a chunk with sample = true
  kEveryMicroBatch,    // all of them, so the backend can return logits of every position
};

struct PrefillPlanOptions {
  int n_stages = 1;
  // Sequence groups; 0: n_stages, the fewest that keep every stage busy once the pipeline is
  // full. Clamped to the number of sequences (groups never split a sequence, none is empty).
  int n_micro_batches = 0;
  // > 0: split each sequence's new tokens into chunks of at most this many; the micro-batches
  // are then (chunk round) x (sequence group). 0: no chunking.
  int64_t chunk_tokens = 0;
  SampleRule sample_rule = SampleRule::kWhereChunksSample;

  // Throws conveyor::Error(kInvalidArgument) naming the field, value and limit.
  void validate() const;
};

struct DecodePlanOptions {
  int n_stages = 1;
  // Sequence groups; 0: min(n_stages, sequences). Clamped to the number of sequences.
  int n_micro_batches = 0;

  void validate() const;
};

// Prefill by sequence groups: the sequences go whole into min(M, n) groups of balanced token
// counts (balance_groups); one micro-batch per group.
StepPlan build_prefill_groups_plan(int64_t step, const std::vector<PrefillSeq>& seqs,
                                   const PrefillPlanOptions& options);

// Prefill by token chunks: sequences grouped as above; each sequence's new tokens are split into
// chunk_sizes(n, chunk_tokens). Micro-batch (r, g) holds chunk r of every sequence of group g
// that has one; micro-batches are ordered round-major, so chunk r of a sequence precedes its
// chunk r+1 on every stage, and a single long prompt alone fills the pipeline. Only a
// sequence's last chunk samples. Requires options.chunk_tokens > 0.
StepPlan build_prefill_chunks_plan(int64_t step, const std::vector<PrefillSeq>& seqs,
                                   const PrefillPlanOptions& options);

// build_prefill_chunks_plan when options.chunk_tokens > 0, else build_prefill_groups_plan.
StepPlan build_prefill_plan(int64_t step, const std::vector<PrefillSeq>& seqs,
                            const PrefillPlanOptions& options);

// Decode: one token per sequence, positions [committed, committed + 1), each sampling; the
// sequences are split in input order into min(M, n) contiguous groups whose sizes differ by at
// most one (the first groups take the extra sequence). A sequence appears once: pipeline
// parallelism never runs one sequence across decode steps.
StepPlan build_decode_plan(int64_t step, const std::vector<SeqState>& seqs,
                           const DecodePlanOptions& options);

// --- helpers, exposed for tests and the simulator ---------------------------------------------

// Assigns items of the given weights (each >= 0) to min(n_groups, weights.size()) non-empty
// groups with balanced weight sums (greedy: heaviest first onto the lightest group, ties to the
// lower index). Returns item indices per group, ascending within a group (input order), groups
// ordered by their first item.
std::vector<std::vector<size_t>> balance_groups(const std::vector<int64_t>& weights, int n_groups);

// Sizes of the chunks n_tokens is split into: ceil(n_tokens / chunk_tokens) parts of near-equal
// size (at most chunk_tokens; the first ones one token larger when it does not divide). Equal
// sizes keep pipeline slots even; a cost-aware splitter may later shrink later chunks, whose
// attention spans more positions.
std::vector<int64_t> chunk_sizes(int64_t n_tokens, int64_t chunk_tokens);

// The standard per-stage programs over micro_batches in order: Recv (s > 0), Compute, then Send
// (s < S-1) or, on the last stage, Sample as `rule` says; then Commit.
std::vector<std::vector<Instruction>> build_programs(
    int n_stages, const std::vector<MicroBatch>& micro_batches,
    SampleRule rule = SampleRule::kWhereChunksSample);

}  // namespace conveyor
