// What Engine::open needs to run its slice of a pipeline that spans processes, without seeing
// the transport (MPI: src/dist/mpi_session.hpp).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "backend/link.hpp"
#include "conveyor/process_group.hpp"
#include "runtime/pipeline.hpp"
#include "runtime/remote.hpp"

namespace conveyor::dist {

class Distributed {
 public:
  // An engine's own channel among the processes of `group` (collective: every process opens
  // its engines in the same order). Throws kInvalidArgument when conveyor was built without MPI.
  static std::shared_ptr<Distributed> create(const ProcessGroup& group,
                                             std::chrono::milliseconds timeout);
  virtual ~Distributed() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Collectives, at open: rank 0's value everywhere; every rank's value on rank 0.
  virtual std::string broadcast(const std::string& value) = 0;
  virtual std::vector<std::string> gather(const std::string& value) = 0;
  // The link from stage `from_stage` here to the next stage on rank `peer`, or into this
  // process' first stage from the previous one on `peer`.
  virtual std::unique_ptr<Link> make_link(int from_stage, int peer, int capacity) = 0;
  // The channel to rank `peer` of a link whose rows travel another way (CUDA stages: NCCL). One
  // per neighbouring pair of processes (the pipeline has one link between them).
  virtual std::unique_ptr<PeerChannel> make_peer_channel(int peer) = 0;
  // The leader: the followers, named by rank for error messages.
  virtual std::shared_ptr<RemoteStages> make_remote(std::vector<std::string> rank_names) = 0;
  // A follower: sends a finished step's report to the leader (never throws: logs a failure,
  // after which the leader stops for want of the report).
  virtual void report(StepReport&& report) = 0;
  // A follower: runs the leader's steps on `pipeline` until the leader stops.
  virtual void follow(Pipeline& pipeline) = 0;

  // Collective: rank 0's `decide()` on every rank; when it throws, every rank throws its message
  // (kInvalidArgument), so that all fail together.
  std::string decided_by_rank0(const std::function<std::string()>& decide);
  // Collective: throws on every rank (kInvalidArgument, naming both) when some rank's `mine`
  // differs from rank 0's; `what` says what was compared.
  void check_same_everywhere(const std::string& mine, std::string_view what);
  // Collective: runs `check` here; when it throws on any rank, every rank throws the first
  // failing rank's error (its code; its message prefixed with its rank), so that a check that
  // fails on one process only does not leave the others waiting in the next collective.
  void fail_together(const std::function<void()>& check);
};

}  // namespace conveyor::dist
