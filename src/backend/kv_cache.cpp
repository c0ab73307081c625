// KvCache: on-demand host storage per sequence slot over a KvLedger.
#include "backend/kv_cache.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace conveyor {

KvCache::KvCache(const KvCacheShape& shape)
    : shape_(shape), ledger_(shape.max_seqs, shape.max_context) {
  if (shape.n_layers < 0 || shape.n_kv_heads <= 0 || shape.head_dim <= 0) {
    fail(ErrorCode::kInvalidArgument,
         "invalid KV cache shape: layers {}, kv heads {}, head_dim {}; layers must be >= 0, "
         "the others positive",
         shape.n_layers, shape.n_kv_heads, shape.head_dim);
  }
  slots_.resize(static_cast<size_t>(shape.max_seqs));
  for (Storage& s : slots_) {
    s.k.resize(static_cast<size_t>(shape.n_layers));
    s.v.resize(static_cast<size_t>(shape.n_layers));
  }
}

KvCache::Storage& KvCache::storage(int32_t seq) {
  ledger_.committed(seq);  // checks the slot
  return slots_[static_cast<size_t>(seq)];
}

const KvCache::Storage& KvCache::storage(int32_t seq) const {
  ledger_.committed(seq);
  return slots_[static_cast<size_t>(seq)];
}

void KvCache::reserve(int32_t seq, int64_t begin, int64_t end) {
  ledger_.reserve(seq, begin, end);
  Storage& s = slots_[static_cast<size_t>(seq)];
  if (end > s.capacity) {
    // Grow geometrically so a decode loop reallocates O(log n) times.
    const int64_t capacity = std::max<int64_t>(
        end, std::min<int64_t>(shape_.max_context, std::max<int64_t>(64, 2 * s.capacity)));
    const size_t floats = static_cast<size_t>(capacity * shape_.kv_dim());
    for (int64_t l = 0; l < shape_.n_layers; ++l) {
      s.k[static_cast<size_t>(l)].resize(floats);
      s.v[static_cast<size_t>(l)].resize(floats);
    }
    s.capacity = capacity;
  }
}

float* KvCache::keys(int64_t layer, int32_t seq) {
  return storage(seq).k.at(static_cast<size_t>(layer)).data();
}
float* KvCache::values(int64_t layer, int32_t seq) {
  return storage(seq).v.at(static_cast<size_t>(layer)).data();
}
const float* KvCache::keys(int64_t layer, int32_t seq) const {
  return storage(seq).k.at(static_cast<size_t>(layer)).data();
}
const float* KvCache::values(int64_t layer, int32_t seq) const {
  return storage(seq).v.at(static_cast<size_t>(layer)).data();
}

int64_t KvCache::allocated_bytes() const {
  int64_t bytes = 0;
  for (const Storage& s : slots_)
    bytes += 2 * shape_.n_layers * s.capacity * shape_.kv_dim() * 4;
  return bytes;
}

}  // namespace conveyor
