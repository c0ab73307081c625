// NcclPeerLink: one end of the link between a CUDA stage in this process and its neighbour in
// another process (stages as MPI ranks, one GPU per rank). The rows travel over an NCCL
// communicator of the two ends; everything else (each micro-batch's header, the communicator's
// bootstrap id, reset markers) over a PeerChannel that the process transport provides, so this
// code knows nothing of MPI. Includes no CUDA header (the plug-in interface names its options).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "backend/cuda/nccl_communicator.hpp"
#include "backend/link.hpp"

namespace conveyor::cuda {

struct NcclPeerLinkOptions {
  bool sender = false;     // this process runs stage `from_stage`, else from_stage + 1
  int from_stage = 0;      // the link carries stage from_stage's output to from_stage + 1
  int device = 0;          // this end's GPU
  int64_t max_tokens = 0;  // rows of the largest micro-batch the receiving stage takes
  int64_t hidden = 0;
  int capacity = 2;  // unconfirmed sends, as a host link's queue
  // Bounds creating the communicator and draining a reset (each transfer has its own timeout).
  std::chrono::milliseconds timeout{120'000};
};

class NcclRowSender;
class NcclRowReceiver;

// Protocol, in the channel's order: at construction the sender makes an ncclUniqueId and sends
// it, and both ends join a two-rank communicator (the sender is rank 0; joining waits for the
// other end). Per micro-batch the sender sends a header (step, micro-batch, rows or "aborted")
// and then, for rows, enqueues an ncclSend; the receiver takes the header and receives the rows
// into its own pool. A cancelled link may leave NCCL transfers unmatched, so reset() retires the
// communicator on both ends: the sender sends a marker carrying a new id behind whatever it sent,
// the receiver drops every header up to the marker, and both join the new communicator on their
// next transfer (the leader resets before it tells the followers, so neither end may wait for
// the other inside reset()).
class NcclPeerLink final : public Link {
 public:
  // Collective with the other end (kTimeout after options.timeout).
  NcclPeerLink(std::unique_ptr<PeerChannel> channel, const NcclPeerLinkOptions& options);
  ~NcclPeerLink() override;  // aborts the communicator: nothing is in flight between steps
  NcclPeerLink(const NcclPeerLink&) = delete;
  NcclPeerLink& operator=(const NcclPeerLink&) = delete;

  void send(LinkMessage&& message, std::chrono::milliseconds timeout) override;
  LinkMessage recv(std::chrono::milliseconds timeout) override;
  void cancel() override;
  void reset() override;

 private:
  // Joins the communicator of `id` (rank 0 on the sender), replacing the current one.
  void join(const NcclUniqueId& id, std::chrono::milliseconds timeout);
  void join_pending(std::chrono::milliseconds timeout);  // after a reset: the new communicator
  std::string name() const;
  PeerChannel::StopFn stop() const;

  std::unique_ptr<PeerChannel> channel_;
  NcclPeerLinkOptions options_;
  std::optional<NcclCommunicator> comm_;
  std::optional<NcclUniqueId> pending_;
  std::unique_ptr<NcclRowSender> sender_;      // on the sending end
  std::unique_ptr<NcclRowReceiver> receiver_;  // on the receiving end
  std::atomic<bool> cancelled_{false};
  std::string failed_;  // why the link is unusable for good
};

}  // namespace conveyor::cuda
