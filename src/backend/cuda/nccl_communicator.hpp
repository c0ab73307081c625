// NcclCommunicator: the NCCL ranks this process drives (one per device), grouped point-to-point
// transfers of device buffers, and a deadline-bounded wait that polls for asynchronous errors
// and aborts the communicator on failure or timeout, so a dead peer never hangs a stage.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

typedef struct CUstream_st* cudaStream_t;
typedef struct ncclComm* ncclComm_t;

namespace conveyor::cuda {

// The bootstrap id of a communicator (the bytes of an ncclUniqueId): made once by rank 0 and
// handed to every rank by the launcher (MPI broadcast, a shared file, ...).
struct NcclUniqueId {
  std::array<char, 128> bytes{};
};

// One send or receive of a device buffer. Peers pair FIFO per (sender, receiver) like links.
struct NcclTransfer {
  enum class Kind { kSend, kRecv };
  Kind kind = Kind::kSend;
  int local_rank = 0;      // which of this process's ranks (index into its devices)
  int peer = 0;            // global rank on the other side
  void* buffer = nullptr;  // [bytes] on the local rank's device
  size_t bytes = 0;
  cudaStream_t stream = nullptr;  // a stream of the local rank's device
};

// Communicators are non-blocking (ncclConfig_t::blocking = 0): no NCCL call waits for a peer
// on the host, every wait goes through wait() and its deadline. After a failure or timeout the
// communicator is aborted (ncclCommAbort: in-flight kernels stop) and every later call throws
// kCommunication; make a new one. Not thread-safe: one thread drives a communicator.
class NcclCommunicator {
 public:
  // One process, one rank per device: rank i on devices[i]. The single-process counterpart of
  // ncclCommInitAll, built from ncclCommInitRankConfig calls in one group because
  // ncclCommInitAll cannot make non-blocking communicators.
  static NcclCommunicator init_all(const std::vector<int>& devices,
                                   std::chrono::milliseconds timeout);
  // Rank 0 of a multi-process world calls this and shares the id.
  static NcclUniqueId make_unique_id();
  // One rank of a world of `world_size` ranks (one per process), on `device`. Waits for the other
  // ranks to join, up to `timeout` or until `cancelled` becomes true (as in wait()).
  static NcclCommunicator init_rank(const NcclUniqueId& id, int world_size, int rank, int device,
                                    std::chrono::milliseconds timeout,
                                    const std::atomic<bool>* cancelled = nullptr);

  ~NcclCommunicator();  // never throws: destroys the communicators (aborts them after a failure)
  NcclCommunicator(NcclCommunicator&& other) noexcept;
  NcclCommunicator& operator=(NcclCommunicator&& other) noexcept;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int world_size() const { return world_size_; }
  int n_local_ranks() const { return static_cast<int>(comms_.size()); }
  int global_rank(int local_rank) const;
  int device(int local_rank) const;
  bool aborted() const { return aborted_; }

  // Enqueues the transfers as one NCCL group (ncclGroupStart/End), so the sends and receives of
  // a step progress together whatever their order. Returns once NCCL accepted them (bounded by
  // `timeout`; NCCL connects a pair of ranks on their first transfer, which needs the peer's
  // matching call); the data moves asynchronously on the transfers' streams. `cancelled` as in
  // wait().
  void enqueue(std::span<const NcclTransfer> transfers, std::chrono::milliseconds timeout,
               const std::atomic<bool>* cancelled = nullptr);
  // Waits until the transfers' streams drained (everything enqueued on them before, included),
  // polling cudaStreamQuery and ncclCommGetAsyncError. An NCCL error throws kCommunication and a
  // passed deadline throws kTimeout, each naming the rank, peer and bytes, after aborting. When
  // `cancelled` becomes true (another thread cancelled the step), aborts and throws kAborted.
  void wait(std::span<const NcclTransfer> transfers, std::chrono::milliseconds timeout,
            const std::atomic<bool>* cancelled = nullptr);
  // enqueue() then wait().
  void run(std::span<const NcclTransfer> transfers, std::chrono::milliseconds timeout);

  // Aborts every communicator (in-flight operations stop); idempotent; never throws.
  void abort() noexcept;

  // One communicator per local rank, each with the same world (init_all made them together, as
  // NCCL requires): so that each rank can be driven by its own thread. Leaves this empty.
  std::vector<NcclCommunicator> split() &&;

 private:
  NcclCommunicator(std::vector<ncclComm_t> comms, std::vector<int> devices, std::vector<int> ranks,
                   int world_size);
  // Polls every communicator until none reports ncclInProgress; aborts and throws on an error
  // or when `deadline` passes. `what` names the operation for the message.
  void settle(const std::string& what, std::chrono::steady_clock::time_point deadline,
              const std::atomic<bool>* cancelled = nullptr);
  void require_usable(const char* what) const;

  std::vector<ncclComm_t> comms_;  // [n_local_ranks]
  std::vector<int> devices_;       // [n_local_ranks]
  std::vector<int> ranks_;         // [n_local_ranks] global rank of each
  int world_size_ = 0;
  bool aborted_ = false;
};

}  // namespace conveyor::cuda
