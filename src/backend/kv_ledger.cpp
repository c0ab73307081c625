// KvLedger: the KV commit barrier's bookkeeping per sequence slot.
#include "backend/kv_ledger.hpp"

#include "core/check.hpp"

namespace conveyor {

KvLedger::KvLedger(int32_t max_seqs, int64_t max_context) : max_context_(max_context) {
  if (max_seqs <= 0 || max_context <= 0) {
    fail(ErrorCode::kInvalidArgument,
         "a KV cache needs positive slots and context, got {} slots and {} positions", max_seqs,
         max_context);
  }
  slots_.resize(static_cast<size_t>(max_seqs));
}

KvLedger::Slot& KvLedger::slot(int32_t seq) {
  if (seq < 0 || seq >= max_seqs()) {
    fail(ErrorCode::kInvalidArgument, "sequence slot {} is outside the KV cache's {} slots", seq,
         max_seqs());
  }
  return slots_[static_cast<size_t>(seq)];
}

const KvLedger::Slot& KvLedger::slot(int32_t seq) const {
  return const_cast<KvLedger*>(this)->slot(seq);
}

int64_t KvLedger::committed(int32_t seq) const {
  return slot(seq).committed;
}

int64_t KvLedger::pending(int32_t seq) const {
  return slot(seq).pending;
}

void KvLedger::reserve(int32_t seq, int64_t begin, int64_t end) {
  Slot& s = slot(seq);
  if (begin != s.pending) {
    fail(ErrorCode::kInternal,
         "causal/KV order: sequence {} writes positions [{}, {}) but its KV cache ends at {} "
         "(committed {}); chunks of a sequence must arrive in position order",
         seq, begin, end, s.pending, s.committed);
  }
  if (end <= begin || end > max_context_) {
    fail(ErrorCode::kInvalidArgument,
         "sequence {} needs KV positions [{}, {}) but max_context is {}; raise "
         "EngineOptions::capacity.max_context (--max-context) or shorten the request",
         seq, begin, end, max_context_);
  }
  s.pending = end;
}

int64_t KvLedger::last_committed_step(int32_t seq) const {
  return slot(seq).last_step;
}

void KvLedger::commit(int64_t step, std::span<const int32_t> seqs) {
  for (int32_t seq : seqs) {
    const Slot& s = slot(seq);
    if (step <= s.last_step) {
      fail(ErrorCode::kInternal,
           "step dependency: commit of step {} for sequence {} after its step {} was already "
           "committed",
           step, seq, s.last_step);
    }
  }
  for (int32_t seq : seqs) {
    Slot& s = slot(seq);
    s.committed = s.pending;
    s.last_step = step;
  }
}

void KvLedger::rollback(std::span<const int32_t> seqs) {
  for (int32_t seq : seqs) {
    Slot& s = slot(seq);
    s.pending = s.committed;
  }
}

void KvLedger::truncate(int32_t seq, int64_t length) {
  Slot& s = slot(seq);
  if (length < 0 || length > s.committed || s.pending != s.committed) {
    fail(ErrorCode::kInvalidArgument,
         "cannot truncate sequence {} to {} positions: it has {} committed and {} pending; "
         "truncate only between steps, to at most the committed length",
         seq, length, s.committed, s.pending);
  }
  s.committed = length;
  s.pending = length;
  if (length == 0) s.last_step = -1;
}

}  // namespace conveyor
