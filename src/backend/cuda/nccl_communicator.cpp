// NcclCommunicator: non-blocking NCCL communicators, grouped send/recv and deadline-bounded
// waits with asynchronous error polling and abort.
#include "backend/cuda/nccl_communicator.hpp"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <utility>

#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

static_assert(sizeof(ncclUniqueId) == sizeof(NcclUniqueId::bytes),
              "NcclUniqueId must hold exactly an ncclUniqueId");

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollInterval = std::chrono::microseconds(50);
constexpr auto kDestroyTimeout = std::chrono::seconds(10);

bool ok_or_pending(ncclResult_t result) {
  return result == ncclSuccess || result == ncclInProgress;
}

std::string nccl_message(ncclResult_t result, ncclComm_t comm) {
  std::string message = ncclGetErrorString(result);
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && *last != '\0') message += std::string(" (") + last + ")";
  return message;
}

// The NCCL counterpart of CONVEYOR_CUDA_CHECK for calls that involve no peer (ncclInProgress is
// fine: a non-blocking communicator finishes later and settle() polls it).
void check_nccl(ncclResult_t result, const char* call, const char* file, int line) {
  if (ok_or_pending(result)) return;
  fail(ErrorCode::kCommunication, "{} failed: {} at {}:{}", call, nccl_message(result, nullptr),
       file, line);
}
#define CONVEYOR_NCCL_CHECK(call) check_nccl((call), #call, __FILE__, __LINE__)

std::string describe(std::span<const NcclTransfer> transfers, const std::vector<int>& ranks) {
  std::string text;
  constexpr size_t kShown = 4;
  for (size_t i = 0; i < transfers.size() && i < kShown; ++i) {
    const NcclTransfer& t = transfers[i];
    const int rank = ranks.at(static_cast<size_t>(t.local_rank));
    if (!text.empty()) text += ", ";
    text += t.kind == NcclTransfer::Kind::kSend
                ? fmt::format("send of {} bytes from rank {} to peer {}", t.bytes, rank, t.peer)
                : fmt::format("recv of {} bytes on rank {} from peer {}", t.bytes, rank, t.peer);
  }
  if (transfers.size() > kShown) text += fmt::format(" and {} more", transfers.size() - kShown);
  return text;
}

ncclConfig_t non_blocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

}  // namespace

NcclCommunicator::NcclCommunicator(std::vector<ncclComm_t> comms, std::vector<int> devices,
                                   std::vector<int> ranks, int world_size)
    : comms_(std::move(comms)),
      devices_(std::move(devices)),
      ranks_(std::move(ranks)),
      world_size_(world_size) {}

NcclCommunicator NcclCommunicator::init_all(const std::vector<int>& devices,
                                            std::chrono::milliseconds timeout) {
  if (devices.empty()) {
    fail(ErrorCode::kInvalidArgument, "an NCCL communicator needs at least one device");
  }
  const int n = static_cast<int>(devices.size());
  ncclUniqueId id;
  CONVEYOR_NCCL_CHECK(ncclGetUniqueId(&id));
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  std::vector<int> ranks;
  ncclResult_t first_error = ncclSuccess;
  CONVEYOR_NCCL_CHECK(ncclGroupStart());
  for (int i = 0; i < n; ++i) {
    ranks.push_back(i);
    ncclConfig_t config = non_blocking_config();
    const cudaError_t selected = cudaSetDevice(devices[static_cast<size_t>(i)]);
    const ncclResult_t result =
        selected == cudaSuccess
            ? ncclCommInitRankConfig(&comms[static_cast<size_t>(i)], n, id, i, &config)
            : ncclInvalidArgument;
    if (!ok_or_pending(result) && first_error == ncclSuccess) first_error = result;
  }
  const ncclResult_t group = ncclGroupEnd();
  if (first_error == ncclSuccess && !ok_or_pending(group)) first_error = group;
  // From here the object owns whatever was created and frees it on any error.
  NcclCommunicator communicator(std::move(comms), devices, std::move(ranks), n);
  if (first_error != ncclSuccess) {
    communicator.abort();
    fail(ErrorCode::kCommunication,
         "creating NCCL communicators for {} device(s) failed: {}; check the device ids and that "
         "NCCL supports them",
         n, nccl_message(first_error, nullptr));
  }
  communicator.settle("communicator initialization", Clock::now() + timeout);
  return communicator;
}

NcclUniqueId NcclCommunicator::make_unique_id() {
  ncclUniqueId id;
  CONVEYOR_NCCL_CHECK(ncclGetUniqueId(&id));
  NcclUniqueId out;
  std::memcpy(out.bytes.data(), id.internal, out.bytes.size());
  return out;
}

NcclCommunicator NcclCommunicator::init_rank(const NcclUniqueId& unique_id, int world_size,
                                             int rank, int device,
                                             std::chrono::milliseconds timeout,
                                             const std::atomic<bool>* cancelled) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    fail(ErrorCode::kInvalidArgument,
         "NCCL rank {} of a world of {} ranks is invalid; ranks are 0..world_size-1", rank,
         world_size);
  }
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.bytes.data(), unique_id.bytes.size());
  CONVEYOR_CUDA_CHECK(cudaSetDevice(device));
  ncclComm_t comm = nullptr;
  ncclConfig_t config = non_blocking_config();
  const ncclResult_t result = ncclCommInitRankConfig(&comm, world_size, id, rank, &config);
  NcclCommunicator communicator({comm}, {device}, {rank}, world_size);
  if (!ok_or_pending(result)) {
    communicator.abort();
    fail(ErrorCode::kCommunication,
         "creating NCCL rank {} of {} on CUDA device {} failed: {}; check that every rank uses "
         "the same unique id and world size",
         rank, world_size, device, nccl_message(result, nullptr));
  }
  communicator.settle("communicator initialization", Clock::now() + timeout, cancelled);
  return communicator;
}

NcclCommunicator::~NcclCommunicator() {
  if (aborted_) return;
  // Graceful: finalize (flushes outstanding work), poll until quiescent, destroy. A peer that
  // does not answer turns this into an abort rather than a hang.
  bool clean = true;
  for (size_t i = 0; i < comms_.size(); ++i) {
    if (comms_[i] == nullptr) continue;
    cudaSetDevice(devices_[i]);
    if (!ok_or_pending(ncclCommFinalize(comms_[i]))) clean = false;
  }
  const auto deadline = Clock::now() + kDestroyTimeout;
  for (size_t i = 0; clean && i < comms_.size(); ++i) {
    if (comms_[i] == nullptr) continue;
    ncclResult_t state = ncclInProgress;
    while (state == ncclInProgress && Clock::now() < deadline) {
      if (ncclCommGetAsyncError(comms_[i], &state) != ncclSuccess) state = ncclInternalError;
      if (state == ncclInProgress) std::this_thread::sleep_for(kPollInterval);
    }
    if (state != ncclSuccess) clean = false;
  }
  if (!clean) {
    spdlog::warn("NCCL communicator did not finalize cleanly; aborting it");
    abort();
    return;
  }
  for (size_t i = 0; i < comms_.size(); ++i) {
    if (comms_[i] == nullptr) continue;
    cudaSetDevice(devices_[i]);
    const ncclResult_t result = ncclCommDestroy(comms_[i]);
    if (!ok_or_pending(result)) {
      spdlog::warn("ncclCommDestroy of rank {} failed: {}", ranks_[i], ncclGetErrorString(result));
    }
    comms_[i] = nullptr;
  }
}

NcclCommunicator::NcclCommunicator(NcclCommunicator&& other) noexcept
    : comms_(std::move(other.comms_)),
      devices_(std::move(other.devices_)),
      ranks_(std::move(other.ranks_)),
      world_size_(other.world_size_),
      aborted_(other.aborted_) {
  other.comms_.clear();
}

NcclCommunicator& NcclCommunicator::operator=(NcclCommunicator&& other) noexcept {
  if (this != &other) {
    NcclCommunicator old(std::move(*this));  // frees what this held
    comms_ = std::move(other.comms_);
    devices_ = std::move(other.devices_);
    ranks_ = std::move(other.ranks_);
    world_size_ = other.world_size_;
    aborted_ = other.aborted_;
    other.comms_.clear();
  }
  return *this;
}

std::vector<NcclCommunicator> NcclCommunicator::split() && {
  std::vector<NcclCommunicator> parts;
  parts.reserve(comms_.size());  // no throw below: each communicator has one owner throughout
  for (size_t i = 0; i < comms_.size(); ++i) {
    parts.push_back(NcclCommunicator({comms_[i]}, {devices_[i]}, {ranks_[i]}, world_size_));
    parts.back().aborted_ = aborted_;
  }
  comms_.clear();
  devices_.clear();
  ranks_.clear();
  return parts;
}

int NcclCommunicator::global_rank(int local_rank) const {
  return ranks_.at(static_cast<size_t>(local_rank));
}

int NcclCommunicator::device(int local_rank) const {
  return devices_.at(static_cast<size_t>(local_rank));
}

void NcclCommunicator::abort() noexcept {
  for (size_t i = 0; i < comms_.size(); ++i) {
    if (comms_[i] == nullptr) continue;
    cudaSetDevice(devices_[i]);
    const ncclResult_t result = ncclCommAbort(comms_[i]);
    if (!ok_or_pending(result)) {
      spdlog::warn("ncclCommAbort of rank {} failed: {}", ranks_[i], ncclGetErrorString(result));
    }
    comms_[i] = nullptr;
  }
  aborted_ = true;
}

void NcclCommunicator::require_usable(const char* what) const {
  if (aborted_) {
    fail(ErrorCode::kCommunication,
         "NCCL {}: the communicator was aborted after an earlier failure or timeout; create a "
         "new one",
         what);
  }
}

void NcclCommunicator::settle(const std::string& what, Clock::time_point deadline,
                              const std::atomic<bool>* cancelled) {
  for (;;) {
    if (cancelled != nullptr && cancelled->load()) {
      abort();
      fail(ErrorCode::kAborted, "NCCL {} was cancelled; the communicator was aborted", what);
    }
    bool pending = false;
    for (size_t i = 0; i < comms_.size(); ++i) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t result = ncclCommGetAsyncError(comms_[i], &state);
      if (result != ncclSuccess) state = result;
      if (state == ncclInProgress) {
        pending = true;
      } else if (state != ncclSuccess) {
        const std::string message = nccl_message(state, comms_[i]);
        const int rank = ranks_[i], device = devices_[i];
        abort();
        fail(ErrorCode::kCommunication,
             "NCCL {} failed on rank {} (CUDA device {}): {}; the communicator was aborted", what,
             rank, device, message);
      }
    }
    if (!pending) return;
    if (Clock::now() > deadline) {
      abort();
      fail(ErrorCode::kTimeout,
           "NCCL {} did not finish before its deadline; a peer is probably dead or stuck; the "
           "communicator was aborted",
           what);
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

void NcclCommunicator::enqueue(std::span<const NcclTransfer> transfers,
                               std::chrono::milliseconds timeout,
                               const std::atomic<bool>* cancelled) {
  require_usable("enqueue");
  for (const NcclTransfer& t : transfers) {
    if (t.local_rank < 0 || t.local_rank >= n_local_ranks()) {
      fail(ErrorCode::kInvalidArgument,
           "NCCL transfer names local rank {} but this process drives {} rank(s)", t.local_rank,
           n_local_ranks());
    }
    if (t.peer < 0 || t.peer >= world_size_) {
      fail(ErrorCode::kInvalidArgument,
           "NCCL transfer names peer {} but the world has {} rank(s) (0..{})", t.peer, world_size_,
           world_size_ - 1);
    }
    if ((t.buffer == nullptr && t.bytes > 0) || t.stream == nullptr) {
      fail(ErrorCode::kInvalidArgument,
           "NCCL transfer of {} bytes with peer {} needs a device buffer and an explicit stream",
           t.bytes, t.peer);
    }
  }
  ncclResult_t first_error = ncclSuccess;
  const NcclTransfer* failed = nullptr;
  CONVEYOR_NCCL_CHECK(ncclGroupStart());
  for (const NcclTransfer& t : transfers) {
    const size_t local = static_cast<size_t>(t.local_rank);
    cudaSetDevice(devices_[local]);
    const ncclResult_t result =
        t.kind == NcclTransfer::Kind::kSend
            ? ncclSend(t.buffer, t.bytes, ncclChar, t.peer, comms_[local], t.stream)
            : ncclRecv(t.buffer, t.bytes, ncclChar, t.peer, comms_[local], t.stream);
    if (!ok_or_pending(result) && first_error == ncclSuccess) {
      first_error = result;
      failed = &t;
    }
  }
  const ncclResult_t group = ncclGroupEnd();
  if (first_error == ncclSuccess && !ok_or_pending(group)) first_error = group;
  if (first_error != ncclSuccess) {
    const std::string what = failed != nullptr
                                 ? describe(std::span<const NcclTransfer>(failed, 1), ranks_)
                                 : describe(transfers, ranks_);
    abort();
    fail(ErrorCode::kCommunication,
         "NCCL could not enqueue the {}: {}; the communicator was "
         "aborted",
         what, ncclGetErrorString(first_error));
  }
  // Errors reported while NCCL finishes the group (on its own thread) name the transfers too.
  settle("enqueue of the " + describe(transfers, ranks_), Clock::now() + timeout, cancelled);
}

void NcclCommunicator::wait(std::span<const NcclTransfer> transfers,
                            std::chrono::milliseconds timeout, const std::atomic<bool>* cancelled) {
  require_usable("wait");
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (cancelled != nullptr && cancelled->load()) {
      const std::string what = describe(transfers, ranks_);
      abort();  // in-flight transfers stop, so their streams drain
      fail(ErrorCode::kAborted, "NCCL {} was cancelled; the communicator was aborted", what);
    }
    // An NCCL error first: a failed peer shows here while the stream would never drain.
    for (size_t i = 0; i < comms_.size(); ++i) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t result = ncclCommGetAsyncError(comms_[i], &state);
      if (result != ncclSuccess) state = result;
      if (!ok_or_pending(state)) {
        const std::string message = nccl_message(state, comms_[i]);
        const std::string what = describe(transfers, ranks_);
        abort();
        fail(ErrorCode::kCommunication,
             "NCCL {} failed: {}; the communicator was aborted (create a new one)", what, message);
      }
    }
    bool done = true;
    for (const NcclTransfer& t : transfers) {
      const cudaError_t result = cudaStreamQuery(t.stream);
      if (result == cudaErrorNotReady) {
        done = false;
      } else if (result != cudaSuccess) {
        const std::string what = describe(transfers, ranks_);
        abort();
        fail(ErrorCode::kCommunication,
             "NCCL {}: the stream failed: {}; the communicator was "
             "aborted",
             what, cudaGetErrorString(result));
      }
    }
    if (done) return;
    if (Clock::now() > deadline) {
      const std::string what = describe(transfers, ranks_);
      abort();
      fail(ErrorCode::kTimeout,
           "NCCL {} did not complete within {} ms; the peer may be dead or never posted the "
           "matching operation; the communicator was aborted (create a new one)",
           what, timeout.count());
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

void NcclCommunicator::run(std::span<const NcclTransfer> transfers,
                           std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  enqueue(transfers, timeout);
  const auto left =
      timeout - std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  wait(transfers, std::max(left, std::chrono::milliseconds(0)));
}

}  // namespace conveyor::cuda
