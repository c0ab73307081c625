// KvCache: one stage's keys and values on the host, per local layer and sequence slot, with its
// KvLedger of committed/pending lengths (the KV commit barrier, docs/architecture.md).
#pragma once

#include <cstdint>
#include <vector>

#include "backend/kv_ledger.hpp"

namespace conveyor {

// Keys are stored transposed in tiles of kKeyTile positions, so attention's score kernel reads
// element c of 16 consecutive keys as one vector: one kv head's keys are
// [capacity / kKeyTile][head_dim][kKeyTile]. Values are rows: [capacity][head_dim].
inline constexpr int64_t kKeyTile = 16;
// Offset of element c of the key at position pos within one kv head's key tiles.
inline int64_t key_offset(int64_t pos, int64_t c, int64_t head_dim) {
  return (pos / kKeyTile) * kKeyTile * head_dim + c * kKeyTile + pos % kKeyTile;
}

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

// Host storage of a stage's keys and values plus its KvLedger. Not thread-safe: owned and used
// by one stage worker. Storage grows per slot on demand (up to max_context), so short requests
// do not pay for the whole context.
class KvCache {
 public:
  explicit KvCache(const KvCacheShape& shape);

  const KvCacheShape& shape() const { return shape_; }
  const KvLedger& ledger() const { return ledger_; }

  int64_t committed(int32_t seq) const { return ledger_.committed(seq); }
  int64_t pending(int32_t seq) const { return ledger_.pending(seq); }
  int64_t last_committed_step(int32_t seq) const { return ledger_.last_committed_step(seq); }

  // KvLedger::reserve, then grows the slot's storage to hold [0, end).
  void reserve(int32_t seq, int64_t begin, int64_t end);

  // Keys and values of one (local layer, sequence), head-major: kv head h starts at
  // h * head_stride(seq); its keys are tiles (key_offset), its values rows [capacity, head_dim],
  // so attention reads each head contiguously. Positions [0, pending(seq)) are valid; capacity
  // is a multiple of kKeyTile; pointers change when reserve() grows.
  float* keys(int64_t layer, int32_t seq);
  float* values(int64_t layer, int32_t seq);
  const float* keys(int64_t layer, int32_t seq) const;
  const float* values(int64_t layer, int32_t seq) const;
  // Floats between consecutive kv heads of one (layer, sequence): capacity * head_dim.
  int64_t head_stride(int32_t seq) const;

  // Writes positions [begin, begin + n) of one (local layer, sequence) from token-major rows
  // k, v: [n, n_kv_heads, head_dim]. The positions must be reserved.
  void store(int64_t layer, int32_t seq, int64_t begin, int64_t n, const float* k, const float* v);

  void commit(int64_t step, std::span<const int32_t> seqs) { ledger_.commit(step, seqs); }
  void rollback(std::span<const int32_t> seqs) { ledger_.rollback(seqs); }
  void truncate(int32_t seq, int64_t length) { ledger_.truncate(seq, length); }
  // truncate(seq, 0): the slot is reused by a new request. Only between steps.
  void release(int32_t seq) { truncate(seq, 0); }

  // Bytes currently allocated.
  int64_t allocated_bytes() const;

 private:
  struct Storage {
    int64_t capacity = 0;               // rows allocated per layer
    std::vector<std::vector<float>> k;  // per layer: n_kv_heads x key tiles (key_offset)
    std::vector<std::vector<float>> v;
  };
  Storage& storage(int32_t seq);
  const Storage& storage(int32_t seq) const;

  KvCacheShape shape_;
  KvLedger ledger_;
  std::vector<Storage> slots_;
};

}  // namespace conveyor
