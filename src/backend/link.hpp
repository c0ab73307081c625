// Link: the ordered channel that carries one micro-batch's activations from stage s to s+1.
// HostLink is the in-process implementation for host memory (CPU backend): bounded,
// double-buffered, cancellable, with receive timeouts so a dead peer never hangs a stage.
// PeerChannel is what a link between two processes exchanges besides its rows.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "backend/stage_backend.hpp"

namespace conveyor {

struct LinkMessage {
  int32_t micro_batch = -1;
  int64_t step = -1;
  Activations activations;  // [n_tokens, hidden], on the host or behind a device handle
  // No rows: the sender's stage failed earlier in this step and stands in for the micro-batch,
  // so the link stays in order for the steps after it (the receiver fails the step too).
  bool aborted = false;
};

class Link {
 public:
  virtual ~Link() = default;
  // Blocks while the link is full. Throws conveyor::Error(kAborted) once cancelled,
  // kTimeout after `timeout`.
  virtual void send(LinkMessage&& message, std::chrono::milliseconds timeout) = 0;
  // Blocks while the link is empty; messages come out in the order they were sent.
  virtual LinkMessage recv(std::chrono::milliseconds timeout) = 0;
  // Wakes every blocked sender and receiver with kAborted; later calls fail the same way.
  virtual void cancel() = 0;
  // Drops queued messages and clears the cancelled state (between steps).
  virtual void reset() = 0;
};

class HostLink final : public Link {
 public:
  // capacity >= 1 messages in flight; 2 = double buffering (the sender fills one while the
  // receiver reads the other).
  explicit HostLink(int capacity = 2);

  void send(LinkMessage&& message, std::chrono::milliseconds timeout) override;
  LinkMessage recv(std::chrono::milliseconds timeout) override;
  void cancel() override;
  void reset() override;

 private:
  const size_t capacity_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<LinkMessage> queue_;
  bool cancelled_ = false;
};

// The bytes the two ends of a link in different processes exchange besides its rows, when the
// rows travel another way (NCCL between GPUs): message headers, a communicator's bootstrap id,
// reset markers. FIFO, like the link. Made by the transport that joins the processes (MPI:
// src/dist), so that a backend's link needs no knowledge of it.
class PeerChannel {
 public:
  using StopFn = std::function<bool()>;
  virtual ~PeerChannel() = default;
  // Both throw conveyor::Error naming the peer: kTimeout past `timeout` (zero: no deadline),
  // kAborted once `stop` returns true, kCommunication when the transport fails.
  virtual void send(std::vector<std::byte> bytes, std::chrono::milliseconds timeout,
                    const StopFn& stop) = 0;
  virtual std::vector<std::byte> recv(std::chrono::milliseconds timeout, const StopFn& stop) = 0;
  // Queues `bytes` behind what was sent and returns without waiting for the peer to take them
  // (a reset marker: the peer resets only after this end's reset returned). A delivery failure
  // surfaces at a later send.
  virtual void post(std::vector<std::byte> bytes) = 0;
};

}  // namespace conveyor
