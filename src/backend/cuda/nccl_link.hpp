// NcclLink: the pipeline's Link over NCCL point-to-point transfers, for stages on distinct GPUs
// (EngineOptions::transport = kNccl). NcclWorld is the one communicator over the stage devices
// (rank s = stage s), split so that each stage's worker thread drives its own rank.
// NcclRowSender and NcclRowReceiver move the rows for it and for the link between processes
// (nccl_peer_link.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
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

// The sending end's rows: the producer's CudaActivations go to `peer` (a global rank of the
// communicator they are sent over) on this end's own stream, at most `capacity` of them
// unconfirmed, so a link stays bounded like a host link.
class NcclRowSender {
 public:
  NcclRowSender(int device, int peer, int capacity);  // `device` current
  // Waits (deadline-bounded) for the earlier sends when `capacity` are unconfirmed, calls
  // `announce` (which tells the receiver that rows are coming: it posts its receive on that, and
  // NCCL may need the receive to accept the send), then enqueues the send of `rows` after the
  // producer's writes and records the producer's `consumed` after it. `cancelled` as in
  // NcclCommunicator::wait.
  void send(NcclCommunicator& comm, const CudaActivations& rows,
            const std::function<void()>& announce, std::chrono::milliseconds timeout,
            const std::atomic<bool>* cancelled);
  // After a success every send was received; after a failure, aborted.
  void reset() { unconfirmed_ = 0; }

 private:
  int device_;
  int peer_;
  int capacity_;
  Stream stream_;
  int unconfirmed_ = 0;
};

// The receiving end's rows: buffers of its own pool on its device, filled by a receive from
// `peer`.
class NcclRowReceiver {
 public:
  // `device` current. The pool holds `capacity` announced micro-batches plus the one the stage
  // reads.
  NcclRowReceiver(int device, int peer, int64_t max_tokens, int64_t hidden, int capacity);
  // Receives `n_tokens` rows (at most max_tokens: kCommunication naming `link` otherwise) and
  // waits for them, deadline-bounded: a dead sender ends in kTimeout (the communicator aborted),
  // never in a hang.
  std::shared_ptr<CudaActivations> recv(NcclCommunicator& comm, int64_t n_tokens,
                                        int32_t micro_batch, const std::string& link,
                                        std::chrono::milliseconds timeout,
                                        const std::atomic<bool>* cancelled);

 private:
  int device_;
  int peer_;
  int64_t max_tokens_;
  Stream stream_;
  ActivationPool pool_;
};

// The rows of `message` as CUDA activations of `hidden` columns on `device`; kCommunication
// naming `link` when they are anything else.
const CudaActivations& cuda_rows_of(const LinkMessage& message, int device, int64_t hidden,
                                    const std::string& link);

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
  int64_t hidden_;
  HostLink announcements_;
  NcclRowSender sender_;      // on the sender's device, its thread only
  NcclRowReceiver receiver_;  // on the receiver's device, its thread only
  std::atomic<bool> cancelled_{false};
};

}  // namespace conveyor::cuda
