// KvCache: committed/pending lengths, KV order, commit and rollback.
#include <gtest/gtest.h>

#include "backend/kv_cache.hpp"
#include "backend/kv_ledger.hpp"
#include "conveyor/error.hpp"

#include <vector>

namespace conveyor {
namespace {

KvCacheShape small_shape() {
  return {.n_layers = 2, .n_kv_heads = 2, .head_dim = 4, .max_seqs = 3, .max_context = 100};
}

const std::vector<int32_t> kSeq0 = {0};
const std::vector<int32_t> kSeqs01 = {0, 1};

TEST(KvCache, ReserveCommitRollback) {
  KvCache kv(small_shape());
  EXPECT_EQ(kv.committed(0), 0);
  kv.reserve(0, 0, 5);
  EXPECT_EQ(kv.pending(0), 5);
  EXPECT_EQ(kv.committed(0), 0);
  // Layer 1, kv head 1, position 4, last element.
  const int64_t at = kv.head_stride(0) + key_offset(4, 3, 4);
  kv.keys(1, 0)[at] = 3.5f;
  kv.commit(0, kSeq0);
  EXPECT_EQ(kv.committed(0), 5);
  EXPECT_EQ(kv.last_committed_step(0), 0);

  kv.reserve(0, 5, 6);
  kv.reserve(1, 0, 2);
  kv.rollback(kSeqs01);
  EXPECT_EQ(kv.pending(0), 5);
  EXPECT_EQ(kv.pending(1), 0);
  EXPECT_FLOAT_EQ(kv.keys(1, 0)[at], 3.5f);  // committed data survives a rollback
}

TEST(KvCache, ChunksMustArriveInPositionOrder) {
  KvCache kv(small_shape());
  kv.reserve(2, 0, 4);
  kv.reserve(2, 4, 8);  // the next chunk of the same step
  try {
    kv.reserve(2, 12, 16);  // skips positions 8..11
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("causal/KV order"), std::string::npos) << e.what();
  }
}

TEST(KvCache, ContextLimitNamesTheFix) {
  KvCache kv(small_shape());
  try {
    kv.reserve(0, 0, 101);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("max_context is 100"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kv.reserve(3, 0, 1), Error);  // slot out of range
}

TEST(KvCache, CommitStepsIncreasePerSequence) {
  KvCache kv(small_shape());
  kv.commit(4, kSeq0);
  EXPECT_THROW(kv.commit(4, kSeq0), Error);
  EXPECT_THROW(kv.commit(2, kSeqs01), Error);
  EXPECT_EQ(kv.last_committed_step(1), -1);  // the failed commit changed nothing
  kv.commit(2, std::vector<int32_t>{1});     // another sequence has its own order (a cohort)
  kv.commit(5, kSeq0);
  EXPECT_EQ(kv.last_committed_step(0), 5);
  EXPECT_EQ(kv.last_committed_step(1), 2);
}

// Two steps in flight for disjoint sequences (two cohorts): each commits or rolls back alone.
TEST(KvCache, StepsOfDisjointSequencesCommitAndRollBackApart) {
  KvCache kv(small_shape());
  kv.reserve(0, 0, 3);  // step 7: sequence 0
  kv.reserve(1, 0, 5);  // step 8: sequence 1
  kv.commit(8, std::vector<int32_t>{1});
  EXPECT_EQ(kv.committed(1), 5);
  EXPECT_EQ(kv.committed(0), 0);  // still pending
  EXPECT_EQ(kv.pending(0), 3);
  kv.rollback(kSeq0);
  EXPECT_EQ(kv.pending(0), 0);
  EXPECT_EQ(kv.committed(1), 5);  // untouched by the other step's rollback
}

// Element c of kv head h at position p: keys in transposed tiles, values in rows.
float key_at(const KvCache& kv, int64_t layer, int32_t seq, int64_t h, int64_t p, int64_t c) {
  return kv.keys(layer, seq)[h * kv.head_stride(seq) + key_offset(p, c, kv.shape().head_dim)];
}
float value_at(const KvCache& kv, int64_t layer, int32_t seq, int64_t h, int64_t p, int64_t c) {
  return kv.values(layer, seq)[h * kv.head_stride(seq) + p * kv.shape().head_dim + c];
}

TEST(KvCache, StoreWritesTokenMajorRowsHeadMajor) {
  KvCache kv(small_shape());
  kv.reserve(1, 0, 3);
  // Token-major [3 tokens, 2 heads, 4]: value = 100 * token + 10 * head + element.
  std::vector<float> k(24), v(24);
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 4; ++c) {
        k[static_cast<size_t>((t * 2 + h) * 4 + c)] = static_cast<float>(100 * t + 10 * h + c);
        v[static_cast<size_t>((t * 2 + h) * 4 + c)] = -static_cast<float>(100 * t + 10 * h + c);
      }
  kv.store(1, 1, 0, 3, k.data(), v.data());
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 4; ++c) {
        EXPECT_EQ(key_at(kv, 1, 1, h, t, c), static_cast<float>(100 * t + 10 * h + c));
        EXPECT_EQ(value_at(kv, 1, 1, h, t, c), -static_cast<float>(100 * t + 10 * h + c));
      }
  EXPECT_THROW(kv.store(1, 1, 2, 2, k.data(), v.data()), Error);  // position 3 not reserved
}

TEST(KvCache, GrowthKeepsWrittenRows) {
  KvCache kv(small_shape());
  for (int64_t p = 0; p < 100; ++p) {
    kv.reserve(0, p, p + 1);
    const std::vector<float> k = {float(p), 1, 2, 3, float(-p), 5, 6, 7};
    kv.store(0, 0, p, 1, k.data(), k.data());
    kv.commit(p, kSeq0);
  }
  for (int64_t p = 0; p < 100; ++p) {
    EXPECT_EQ(value_at(kv, 0, 0, 0, p, 0), static_cast<float>(p));
    EXPECT_EQ(key_at(kv, 0, 0, 1, p, 0), static_cast<float>(-p));
    EXPECT_EQ(key_at(kv, 0, 0, 1, p, 3), 7.0f);
    EXPECT_EQ(key_at(kv, 0, 0, 0, p, 0), static_cast<float>(p));
  }
  // Capacity is whole key tiles: max_context 100 rounds up to 112.
  EXPECT_EQ(kv.allocated_bytes(), 2 * 2 * 112 * 8 * 4);
  kv.release(0);
  EXPECT_EQ(kv.committed(0), 0);
}

}  // namespace
}  // namespace conveyor

namespace conveyor {
namespace {

// The ledger alone (what the CUDA stage owns beside its device caches).
TEST(KvLedger, LengthsFollowTheCommitBarrierRules) {
  KvLedger ledger(2, 10);
  ledger.reserve(0, 0, 4);
  ledger.reserve(0, 4, 6);
  EXPECT_EQ(ledger.pending(0), 6);
  EXPECT_EQ(ledger.committed(0), 0);
  ledger.commit(3, kSeq0);
  EXPECT_EQ(ledger.committed(0), 6);
  EXPECT_THROW(ledger.commit(3, kSeq0), Error);   // steps only increase
  EXPECT_THROW(ledger.reserve(0, 5, 7), Error);   // positions in order
  EXPECT_THROW(ledger.reserve(1, 0, 11), Error);  // beyond max_context
  ledger.reserve(1, 0, 2);
  EXPECT_THROW(ledger.truncate(1, 0), Error);  // not between steps: a write is pending
  ledger.rollback(std::vector<int32_t>{1});
  ledger.truncate(0, 2);
  EXPECT_EQ(ledger.committed(0), 2);
  EXPECT_EQ(ledger.pending(0), 2);
  EXPECT_THROW(ledger.truncate(0, 3), Error);  // only shorter
  ledger.truncate(0, 0);                       // a freed slot starts a new step order
  ledger.commit(1, kSeq0);
  EXPECT_THROW(ledger.committed(2), Error);  // no such slot
  EXPECT_THROW(KvLedger(0, 10), Error);
}

}  // namespace
}  // namespace conveyor
