// NcclLink: the pipeline's Link over NCCL point-to-point transfers, for stages on distinct GPUs
// (EngineOptions::transport = kNccl). NcclWorld is the one communicator over the stage devices
// (rank s = stage s), split so that each stage's worker thread drives its own rank.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/activation_pool.hpp"
#include "backend/cuda/nccl_communicator.hpp"
#include "backend/link.hpp"

namespace conveyor::cuda {

// The ranks of a pipeline's NCCL communicator. Rank s is used by stage s's worker only (for its
// incoming and outgoing link), except in rebuild(), which runs between steps.
class NcclWorld {
 public:
  // devices[s]: stage s's device, all distinct (NCCL runs one rank per GPU). Creates the
  // communicator and connects every pair of neighbouring ranks before splitting it.
  NcclWorld(std::vector<int> devices, std::chrono::milliseconds timeout);
  ~NcclWorld();  // aborts every rank: after a step nothing is in flight, and no rank waits
  NcclWorld(const NcclWorld&) = delete;
  NcclWorld& operator=(const NcclWorld&) = delete;

  // Stage s's rank; kCommunication when a rebuild after a failed step did not succeed.
  NcclCommunicator& rank(int stage);
  int device(int stage) const { return devices_.at(static_cast<size_t>(stage)); }

  // A link was cancelled (a step failed): transfers may be left unmatched. Any thread.
  void mark_failed() { failed_.store(true); }
  // Between steps only: after a failed step, or when a rank was aborted, aborts every rank
  // (stopping any transfer still in flight) and creates and connects the communicator again.
  // Throws when that fails; the next call tries again.
  void recover();

 private:
  std::vector<int> devices_;
  std::chrono::milliseconds timeout_;
  std::vector<NcclCommunicator> ranks_;
  std::atomic<bool> failed_{false};
};

// Link stage `from` -> from + 1. send() (on stage from's thread) announces the micro-batch (id,
// step, rows) through a bounded host queue, then enqueues an ncclSend of the producer's
// CudaActivations on the link's send stream, ordered after the producer's `ready` event, and
// records the producer's `consumed` event after it. recv() (on stage from + 1's thread) takes the
// announcement, receives the rows into a buffer of the link's own pool on its device and
// returns them as CudaActivations, as the in-process device link does. At most `capacity`
// sends are unconfirmed: the next send first waits (deadline-bounded) for the earlier ones.
// cancel() wakes both sides (a side in an NCCL wait aborts its rank) and marks the world
// failed; reset() then recovers it, so the next step starts on healthy communicators.
class NcclLink final : public Link {
 public:
  NcclLink(std::shared_ptr<NcclWorld> world, int from, int64_t max_tokens, int64_t hidden,
           int capacity);
  NcclLink(const NcclLink&) = delete;
  NcclLink& operator=(const NcclLink&) = delete;

  void send(LinkMessage&& message, std::chrono::milliseconds timeout) override;
  LinkMessage recv(std::chrono::milliseconds timeout) override;
  void cancel() override;
  void reset() override;

 private:
  std::shared_ptr<NcclWorld> world_;
  int from_;
  int to_;
  int64_t max_tokens_;
  int64_t hidden_;
  int capacity_;
  HostLink announcements_;
  Stream send_stream_;         // on the sender's device
  Stream recv_stream_;         // on the receiver's device
  ActivationPool pool_;        // on the receiver's device
  int unconfirmed_sends_ = 0;  // sender's thread only
  std::atomic<bool> cancelled_{false};
};

}  // namespace conveyor::cuda
