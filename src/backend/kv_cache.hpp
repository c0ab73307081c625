// KvCache: one stage's keys and values, per local layer and sequence slot, with a committed
// length per sequence. The running step writes after the committed length; commit(step) makes
// the writes visible to later steps, rollback() discards them. See docs/architecture.md, "KV
// commit barrier".
#pragma once

#include <cstdint>
#include <vector>

namespace conveyor {

struct KvCacheShape {
  int64_t n_layers = 0;  // layers held by this stage
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int32_t max_seqs = 0;     // sequence slots
  int64_t max_context = 0;  // positions per sequence

  int64_t kv_dim() const { return n_kv_heads * head_dim; }
  // Bytes of K and V for one token across this stage's layers (fp32).
  int64_t bytes_per_token() const { return 2 * n_layers * kv_dim() * 4; }
};

// Not thread-safe: owned and used by one stage worker. Storage grows per slot on demand (up to
// max_context), so short requests do not pay for the whole context.
class KvCache {
 public:
  explicit KvCache(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }

  // Length visible to the next step (written and committed).
  int64_t committed(int32_t seq) const;
  // End of this step's reserved positions (== committed when the step has not written yet).
  int64_t pending(int32_t seq) const;
  int64_t last_committed_step() const { return last_committed_step_; }

  // Reserves positions [begin, end) of `seq` for writes by the running step. KV order demands
  // begin == pending(seq) (chunks of one sequence arrive in position order) and
  // end <= max_context. Throws conveyor::Error otherwise.
  void reserve(int32_t seq, int64_t begin, int64_t end);

  // Rows of one (local layer, sequence): [capacity, n_kv_heads, head_dim]; rows
  // [0, pending(seq)) are valid.
  float* keys(int64_t layer, int32_t seq);
  float* values(int64_t layer, int32_t seq);
  const float* keys(int64_t layer, int32_t seq) const;
  const float* values(int64_t layer, int32_t seq) const;

  // Makes every pending write visible. `step` must be greater than the last committed step.
  void commit(int64_t step);
  // Discards every write since the last commit.
  void rollback();
  // Forgets a sequence (its slot is reused by a new request). Only between steps.
  void release(int32_t seq);
  // Keeps the first `length` committed positions of `seq` and forgets the rest (a conversation
  // that continues from a shared prefix). Only between steps; length <= committed(seq).
  void truncate(int32_t seq, int64_t length);

  // Bytes currently allocated.
  int64_t allocated_bytes() const;

 private:
  struct Slot {
    int64_t committed = 0;
    int64_t pending = 0;
    int64_t capacity = 0;               // rows allocated per layer
    std::vector<std::vector<float>> k;  // per layer: [capacity, kv_dim]
    std::vector<std::vector<float>> v;
  };
  Slot& slot(int32_t seq);
  const Slot& slot(int32_t seq) const;

  KvCacheShape shape_;
  std::vector<Slot> slots_;
  int64_t last_committed_step_ = -1;
};

}  // namespace conveyor
