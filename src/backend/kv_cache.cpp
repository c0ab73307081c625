// KvCache: committed/pending lengths and on-demand storage per sequence slot.
#include "backend/kv_cache.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace conveyor {

KvCache::KvCache(const KvCacheShape& shape) : shape_(shape) {
  if (shape.n_layers < 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0 || shape.max_seqs <= 0 ||
      shape.max_context <= 0) {
    fail(ErrorCode::kInvalidArgument,
         "invalid KV cache shape: layers {}, kv heads {}, head_dim {}, slots {}, context {}; all "
         "must be positive",
         shape.n_layers, shape.n_kv_heads, shape.head_dim, shape.max_seqs, shape.max_context);
  }
  slots_.resize(static_cast<size_t>(shape.max_seqs));
  for (Slot& s : slots_) {
    s.k.resize(static_cast<size_t>(shape.n_layers));
    s.v.resize(static_cast<size_t>(shape.n_layers));
  }
}

KvCache::Slot& KvCache::slot(int32_t seq) {
  if (seq < 0 || seq >= shape_.max_seqs) {
    fail(ErrorCode::kInvalidArgument, "sequence slot {} is outside the KV cache's {} slots", seq,
         shape_.max_seqs);
  }
  return slots_[static_cast<size_t>(seq)];
}

const KvCache::Slot& KvCache::slot(int32_t seq) const {
  return const_cast<KvCache*>(this)->slot(seq);
}

int64_t KvCache::committed(int32_t seq) const {
  return slot(seq).committed;
}
int64_t KvCache::pending(int32_t seq) const {
  return slot(seq).pending;
}

void KvCache::reserve(int32_t seq, int64_t begin, int64_t end) {
  Slot& s = slot(seq);
  if (begin != s.pending) {
    fail(ErrorCode::kInternal,
         "causal/KV order: sequence {} writes positions [{}, {}) but its KV cache ends at {} "
         "(committed {}); chunks of a sequence must arrive in position order",
         seq, begin, end, s.pending, s.committed);
  }
  if (end <= begin || end > shape_.max_context) {
    fail(ErrorCode::kInvalidArgument,
         "sequence {} needs KV positions [{}, {}) but max_context is {}; raise "
         "EngineOptions::max_context or shorten the request",
         seq, begin, end, shape_.max_context);
  }
  if (end > s.capacity) {
    // Grow geometrically so a decode loop reallocates O(log n) times.
    int64_t capacity = std::max<int64_t>(
        end, std::min<int64_t>(shape_.max_context, std::max<int64_t>(64, 2 * s.capacity)));
    const size_t floats = static_cast<size_t>(capacity * shape_.kv_dim());
    for (int64_t l = 0; l < shape_.n_layers; ++l) {
      s.k[static_cast<size_t>(l)].resize(floats);
      s.v[static_cast<size_t>(l)].resize(floats);
    }
    s.capacity = capacity;
  }
  s.pending = end;
}

float* KvCache::keys(int64_t layer, int32_t seq) {
  return slot(seq).k.at(static_cast<size_t>(layer)).data();
}
float* KvCache::values(int64_t layer, int32_t seq) {
  return slot(seq).v.at(static_cast<size_t>(layer)).data();
}
const float* KvCache::keys(int64_t layer, int32_t seq) const {
  return slot(seq).k.at(static_cast<size_t>(layer)).data();
}
const float* KvCache::values(int64_t layer, int32_t seq) const {
  return slot(seq).v.at(static_cast<size_t>(layer)).data();
}

void KvCache::commit(int64_t step) {
  if (step <= last_committed_step_) {
    fail(ErrorCode::kInternal,
         "step dependency: commit of step {} after step {} was already committed", step,
         last_committed_step_);
  }
  for (Slot& s : slots_)
    s.committed = s.pending;
  last_committed_step_ = step;
}

void KvCache::rollback() {
  for (Slot& s : slots_)
    s.pending = s.committed;
}

void KvCache::release(int32_t seq) {
  truncate(seq, 0);
}

void KvCache::truncate(int32_t seq, int64_t length) {
  Slot& s = slot(seq);
  if (length < 0 || length > s.committed || s.pending != s.committed) {
    fail(ErrorCode::kInvalidArgument,
         "cannot truncate sequence {} to {} positions: it has {} committed and {} pending; "
         "truncate only between steps, to at most the committed length",
         seq, length, s.committed, s.pending);
  }
  s.committed = length;
  s.pending = length;
}

int64_t KvCache::allocated_bytes() const {
  int64_t bytes = 0;
  for (const Slot& s : slots_)
    bytes += 2 * shape_.n_layers * s.capacity * shape_.kv_dim() * 4;
  return bytes;
}

}  // namespace conveyor
