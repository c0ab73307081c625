// Workload: the rows, attention pairs and KV reads of one pass through the layer units, for a
// prefill or decode micro-batch.
#include "conveyor/workload.hpp"

#include "core/check.hpp"

namespace conveyor {

std::string_view to_string(UnitKind kind) {
  switch (kind) {
    case UnitKind::kEmbedding:
      return "embedding";
    case UnitKind::kDecoderLayer:
      return "layer";
    case UnitKind::kHead:
      return "head";
  }
  return "?";
}

Workload Workload::prefill(const PrefillShape& s) {
  if (s.tokens_per_seq < 1 || s.n_seqs < 1 || s.past < 0) {
    fail(ErrorCode::kInvalidArgument,
         "prefill workload needs tokens_per_seq >= 1, n_seqs >= 1 and past >= 0; got {}, {}, {}",
         s.tokens_per_seq, s.n_seqs, s.past);
  }
  const int64_t t = s.tokens_per_seq;
  return Workload{.phase = Phase::kPrefill,
                  .n_tokens = t * s.n_seqs,
                  .attention_pairs = s.n_seqs * (t * s.past + t * (t + 1) / 2),
                  .kv_tokens_read = s.n_seqs * (s.past + t),
                  .n_head_rows = s.all_logits ? t * s.n_seqs : s.n_seqs};
}

Workload Workload::decode(int64_t n_seqs, int64_t context) {
  if (n_seqs < 1 || context < 1) {
    fail(ErrorCode::kInvalidArgument,
         "decode workload needs n_seqs >= 1 and context >= 1; got {} and {}", n_seqs, context);
  }
  return Workload{.phase = Phase::kDecode,
                  .n_tokens = n_seqs,
                  .attention_pairs = n_seqs * context,
                  .kv_tokens_read = n_seqs * context,
                  .n_head_rows = n_seqs};
}

Workload Workload::of(const MicroBatch& mb, Phase phase, LogitsRows head) {
  Workload w;
  w.phase = phase;
  for (const SeqChunk& c : mb.chunks) {
    const int64_t t = c.n_tokens();
    w.n_tokens += t;
    // Row p attends to positions [0, p].
    w.attention_pairs += t * c.begin + t * (t + 1) / 2;
    w.kv_tokens_read += c.end;
    if (head == LogitsRows::kAll) {
      w.n_head_rows += t;
    } else if (c.sample) {
      w.n_head_rows += 1;
    }
  }
  return w;
}

}  // namespace conveyor
