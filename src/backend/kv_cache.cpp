// KvCache: on-demand host storage per sequence slot over a KvLedger.
#include "backend/kv_cache.hpp"

#include <algorithm>
#include <cstring>

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
    const int64_t wanted = std::max<int64_t>(
        end, std::min<int64_t>(shape_.max_context, std::max<int64_t>(64, 2 * s.capacity)));
    const int64_t capacity = (wanted + kKeyTile - 1) / kKeyTile * kKeyTile;
    // Each head's keys (whole tiles) and value rows move when the capacity changes: copy the
    // old capacity's worth of each head.
    const int64_t d = shape_.head_dim, heads = shape_.n_kv_heads;
    auto regrow = [&](std::vector<float>& rows) {
      std::vector<float> grown(static_cast<size_t>(heads * capacity * d));
      if (!rows.empty()) {
        for (int64_t h = 0; h < heads; ++h) {
          std::memcpy(grown.data() + h * capacity * d, rows.data() + h * s.capacity * d,
                      sizeof(float) * static_cast<size_t>(s.capacity * d));
        }
      }
      rows = std::move(grown);
    };
    for (int64_t l = 0; l < shape_.n_layers; ++l) {
      regrow(s.k[static_cast<size_t>(l)]);
      regrow(s.v[static_cast<size_t>(l)]);
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

int64_t KvCache::head_stride(int32_t seq) const {
  return storage(seq).capacity * shape_.head_dim;
}

void KvCache::store(int64_t layer, int32_t seq, int64_t begin, int64_t n, const float* k,
                    const float* v) {
  if (begin < 0 || n < 0 || begin + n > pending(seq)) {
    fail(ErrorCode::kInternal,
         "KV store of positions [{}, {}) of sequence {} outside its reserved [0, {})", begin,
         begin + n, seq, pending(seq));
  }
  Storage& s = storage(seq);
  const int64_t d = shape_.head_dim, heads = shape_.n_kv_heads;
  float* k_rows = s.k.at(static_cast<size_t>(layer)).data();
  float* v_rows = s.v.at(static_cast<size_t>(layer)).data();
  for (int64_t h = 0; h < heads; ++h) {
    float* k_head = k_rows + h * s.capacity * d;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = begin + t, src = (t * heads + h) * d;
      for (int64_t c = 0; c < d; ++c)
        k_head[key_offset(pos, c, d)] = k[src + c];
      std::memcpy(v_rows + h * s.capacity * d + pos * d, v + src,
                  sizeof(float) * static_cast<size_t>(d));
    }
  }
}

int64_t KvCache::allocated_bytes() const {
  int64_t bytes = 0;
  for (const Storage& s : slots_)
    bytes += 2 * shape_.n_layers * s.capacity * shape_.kv_dim() * 4;
  return bytes;
}

}  // namespace conveyor
