// KvLedger: the committed and pending KV length of every sequence slot of a stage, with the
// rules of the KV commit barrier (docs/architecture.md): writes in position order, commits in
// each sequence's step order, rollback to the last commit. Owned by every backend next to its own
// storage.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace conveyor {

// Not thread-safe: owned and used by one stage worker (commit/rollback/truncate between steps).
class KvLedger {
 public:
  // Throws conveyor::Error(kInvalidArgument) unless both are positive.
  KvLedger(int32_t max_seqs, int64_t max_context);

  int32_t max_seqs() const { return static_cast<int32_t>(slots_.size()); }
  int64_t max_context() const { return max_context_; }

  // Length visible to the next step (written and committed).
  int64_t committed(int32_t seq) const;
  // End of this step's reserved positions (== committed when the step has not written yet).
  int64_t pending(int32_t seq) const;
  // The latest step committed for `seq` (-1: none since the slot was last freed).
  int64_t last_committed_step(int32_t seq) const;

  // Reserves positions [begin, end) of `seq` for writes by the running step. KV order demands
  // begin == pending(seq) (chunks of one sequence arrive in position order) and
  // end <= max_context. Throws conveyor::Error otherwise.
  void reserve(int32_t seq, int64_t begin, int64_t end);
  // Makes the pending writes of `seqs` visible as step `step`, which must come after each one's
  // last committed step. Other sequences keep theirs pending.
  void commit(int64_t step, std::span<const int32_t> seqs);
  // Discards the writes to `seqs` since their last commit.
  void rollback(std::span<const int32_t> seqs);
  // Keeps the first `length` committed positions of `seq` (0 frees the slot). Only between
  // steps; length <= committed(seq).
  void truncate(int32_t seq, int64_t length);

 private:
  struct Slot {
    int64_t committed = 0;
    int64_t pending = 0;
    int64_t last_step = -1;
  };
  Slot& slot(int32_t seq);
  const Slot& slot(int32_t seq) const;

  std::vector<Slot> slots_;
  int64_t max_context_ = 0;
};

}  // namespace conveyor
