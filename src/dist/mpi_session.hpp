// MPI underneath a pipeline that spans processes (built only with MPI). MpiGroup is the world
// (conveyor::mpi_world); an MpiSession is one engine's private communicator with the waits every
// transfer uses: non-blocking calls polled until done, cancelled or past their deadline, so a
// peer that stops answering never hangs this process.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/link.hpp"
#include "conveyor/process_group.hpp"
#include "runtime/pipeline.hpp"
#include "runtime/remote.hpp"

namespace conveyor::dist {

class MpiGroup final : public ProcessGroup {
 public:
  MpiGroup(bool owns_mpi, MPI_Comm comm);
  ~MpiGroup() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string host() const override { return host_; }
  std::string transport() const override { return transport_; }
  [[noreturn]] void abort(int exit_code) override;
  MPI_Comm comm() const { return comm_; }

 private:
  bool owns_mpi_;
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::string host_;
  std::string transport_;
};

// Tags of the engine's communicator.
enum Tag : int { kControlTag = 1, kReportTag = 2, kLinkTag = 3, kPeerTag = 4 };

class MpiSession {
 public:
  explicit MpiSession(const ProcessGroup& group);  // MPI_Comm_dup: collective
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm comm() const { return comm_; }

  // Stops waiting when `stop` returns true (throws kAborted) or past `timeout` (kTimeout;
  // `what` says what was awaited, from whom). A zero timeout waits for ever.
  using StopFn = std::function<bool()>;
  void send(int peer, int tag, std::vector<std::byte> bytes, std::chrono::milliseconds timeout,
            const std::string& what, const StopFn& stop = {}) const;
  std::vector<std::byte> recv(int peer, int tag, std::chrono::milliseconds timeout,
                              const std::string& what, const StopFn& stop = {},
                              int* source = nullptr) const;
  // The next message from `peer` with `tag`, which must hold `count` floats.
  std::vector<float> recv_floats(int peer, int tag, size_t count, std::chrono::milliseconds timeout,
                                 const std::string& what, const StopFn& stop = {}) const;
  // Polls `request` (a non-blocking call already posted) the same way.
  void wait(MPI_Request& request, std::chrono::milliseconds timeout, const std::string& what,
            const StopFn& stop) const;

  // Rank 0's `value` on every rank (collective, at open).
  std::string broadcast(const std::string& value) const;
  // Every rank's `value`, on rank 0 (empty elsewhere; collective, at open).
  std::vector<std::string> gather(const std::string& value) const;

 private:
  template <typename Container>
  Container take(MPI_Message& message, int bytes, std::chrono::milliseconds timeout,
                 const std::string& what, const StopFn& stop) const;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

// Non-blocking sends whose buffers must outlive them (used by one thread): a header and, when
// there are any, rows straight from a stage's buffer. On destruction the receiver gets a second
// to take what is still in flight; the rest is left to MPI (its buffers leaked on purpose).
class SendsInFlight {
 public:
  SendsInFlight() = default;
  SendsInFlight(const SendsInFlight&) = delete;
  SendsInFlight& operator=(const SendsInFlight&) = delete;
  ~SendsInFlight();
  // Posts `header`, then `rows` unless empty, to `peer` on `tag`.
  void post(const MpiSession& session, int peer, int tag, std::vector<std::byte> header,
            std::vector<float> rows, const std::string& what);
  // Forgets the sends that completed; returns how many are still in flight.
  size_t reap();

 private:
  struct Send {
    std::vector<std::byte> header;
    std::vector<float> rows;
    MPI_Request requests[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  };
  std::vector<Send> sends_;  // moving a Send keeps its buffers where MPI reads them
};

// The link between the last stage of one process and the first stage of the next: MPI
// non-blocking point-to-point on one tag (MPI's non-overtaking rule keeps it FIFO as the plans
// assume; each message carries its step and micro-batch, which the pipeline checks). Up to
// `capacity` sends are in flight, like HostLink's double buffering. After a cancellation both
// ends reset: the sender sends a marker behind whatever it sent, the receiver drops everything
// up to the marker, and the link is in order again (a reset that hears no marker within the
// timeout fails, and the link stays failed).
class MpiLink final : public Link {
 public:
  // `sender`: this process runs `from_stage` (and sends to `peer`), else `from_stage + 1`.
  MpiLink(std::shared_ptr<const MpiSession> session, int peer, int from_stage, bool sender,
          int capacity, std::chrono::milliseconds reset_timeout);
  void send(LinkMessage&& message, std::chrono::milliseconds timeout) override;
  LinkMessage recv(std::chrono::milliseconds timeout) override;
  void cancel() override;
  void reset() override;

 private:
  std::shared_ptr<const MpiSession> session_;
  int peer_;
  int from_stage_;
  bool sender_;
  size_t capacity_;
  std::chrono::milliseconds reset_timeout_;
  std::atomic<bool> cancelled_{false};
  std::string failed_;       // why the link is unusable for good
  SendsInFlight in_flight_;  // the sender's messages (used by one thread)
};

// A PeerChannel to rank `peer` over the session (tag kPeerTag): blocking sends and receives polled
// like every other wait.
class MpiPeerChannel final : public PeerChannel {
 public:
  MpiPeerChannel(std::shared_ptr<const MpiSession> session, int peer)
      : session_(std::move(session)), peer_(peer) {}
  void send(std::vector<std::byte> bytes, std::chrono::milliseconds timeout,
            const StopFn& stop) override;
  std::vector<std::byte> recv(std::chrono::milliseconds timeout, const StopFn& stop) override;
  void post(std::vector<std::byte> bytes) override;

 private:
  std::shared_ptr<const MpiSession> session_;
  int peer_;
  SendsInFlight posted_;
};

// The leader's RemoteStages over MPI: control messages to every follower, a thread that
// receives their reports and watches for silence.
std::shared_ptr<RemoteStages> make_mpi_remote(std::shared_ptr<const MpiSession> session,
                                              std::vector<std::string> rank_names,
                                              std::chrono::milliseconds timeout);

// A follower: sends `report` to the leader (from a stage worker).
void send_report(const MpiSession& session, StepReport report, std::chrono::milliseconds timeout);
// A follower: runs what the leader sends on `pipeline` (this process' stages) until it says
// stop. Throws when the pipeline breaks, a message is malformed, or the leader sends nothing
// for `timeout` while steps are in flight here.
void follow(const MpiSession& session, Pipeline& pipeline, std::chrono::milliseconds timeout);

}  // namespace conveyor::dist
