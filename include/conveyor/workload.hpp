// Workload: the rows, attention pairs and KV reads of one pass through a layer unit (embedding,
// decoder layer, head) for a prefill or decode micro-batch — what the cost model prices.
#pragma once

#include <cstdint>
#include <string_view>

#include "conveyor/schedule.hpp"
#include "conveyor/step_plan.hpp"

namespace conveyor {

// The units a partition distributes. The embedding always runs on stage 0 and the head (final
// norm + lm_head) on the last stage; decoder layers are what the partitioner moves.
enum class UnitKind { kEmbedding, kDecoderLayer, kHead };

std::string_view to_string(UnitKind kind);

// A prefill micro-batch by its shape (Workload::prefill).
struct PrefillShape {
  int64_t tokens_per_seq = 0;  // new tokens of each sequence
  int64_t n_seqs = 1;
  int64_t past = 0;         // committed positions before them
  bool all_logits = false;  // the head projects every row, not one per sequence
};

// The work of one pass through a unit: a prefill micro-batch or a decode micro-batch.
struct Workload {
  Phase phase = Phase::kPrefill;
  int64_t n_tokens = 0;         // rows flowing through the decoder layers
  int64_t attention_pairs = 0;  // sum over rows of the positions each row attends to
  int64_t kv_tokens_read = 0;   // cached K/V positions each layer reads (per layer)
  int64_t n_head_rows = 0;      // rows the head projects to logits (sampled rows)

  // n_seqs sequences of tokens_per_seq new tokens each after `past` committed positions; one
  // sampled row per sequence (all_logits: every row).
  static Workload prefill(const PrefillShape& shape);
  // n_seqs sequences, one new token each, attending to `context` positions (including the new
  // one).
  static Workload decode(int64_t n_seqs, int64_t context);
  // The work of micro-batch `mb` of a plan in `phase` (chunks may have different pasts).
  static Workload of(const MicroBatch& mb, Phase phase, LogitsRows head = LogitsRows::kSampled);
};

}  // namespace conveyor
