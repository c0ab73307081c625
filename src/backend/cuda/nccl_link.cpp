// NcclWorld and NcclLink: pipeline links over NCCL send/recv between stages on distinct GPUs.
#include "backend/cuda/nccl_link.hpp"

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <set>
#include <utility>

#include "backend/cuda/device_context.hpp"
#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

namespace {

// What send() announces ahead of the rows: the receiver sizes its buffer from it.
class Announcement final : public DeviceActivations {
 public:
  Announcement(int64_t n_tokens, int64_t hidden) : n_tokens(n_tokens), hidden(hidden) {}
  int64_t n_tokens;
  int64_t hidden;
};

// A stream on `device`, made current first.
Stream stream_on(int device) {
  set_device(device);
  return Stream(device);
}

// Every pair of neighbouring ranks exchanges a few bytes once, all in one group driven by this
// thread: NCCL connects a pair on its first transfer, which needs both sides at once, and after
// split() each side is driven by its own thread, which would wait in its first transfer for
// an announcement the peer sends only afterwards.
void connect_neighbours(NcclCommunicator& world, const std::vector<int>& devices,
                        std::chrono::milliseconds timeout) {
  const size_t n = devices.size();
  if (n < 2) return;
  std::vector<Stream> streams;
  std::vector<DeviceBuffer> buffers;
  streams.reserve(n);
  buffers.reserve(n);
  for (size_t s = 0; s < n; ++s) {
    streams.push_back(stream_on(devices[s]));
    buffers.emplace_back(devices[s], 2 * sizeof(int32_t), "NCCL connection probe");
  }
  std::vector<NcclTransfer> transfers;
  for (size_t s = 0; s + 1 < n; ++s) {
    const auto from = static_cast<int>(s), to = static_cast<int>(s + 1);
    transfers.push_back({.kind = NcclTransfer::Kind::kSend,
                         .local_rank = from,
                         .peer = to,
                         .buffer = buffers[s].get(),
                         .bytes = sizeof(int32_t),
                         .stream = streams[s].get()});
    transfers.push_back({.kind = NcclTransfer::Kind::kRecv,
                         .local_rank = to,
                         .peer = from,
                         .buffer = buffers[s + 1].as<int32_t>() + 1,
                         .bytes = sizeof(int32_t),
                         .stream = streams[s + 1].get()});
  }
  world.run(transfers, timeout);
}

std::vector<NcclCommunicator> connected_ranks(const std::vector<int>& devices,
                                              std::chrono::milliseconds timeout) {
  NcclCommunicator world = NcclCommunicator::init_all(devices, timeout);
  connect_neighbours(world, devices, timeout);
  return std::move(world).split();
}

}  // namespace

NcclWorld::NcclWorld(std::vector<int> devices, std::chrono::milliseconds timeout)
    : devices_(std::move(devices)), timeout_(timeout) {
  if (std::set<int>(devices_.begin(), devices_.end()).size() != devices_.size()) {
    fail(ErrorCode::kInvalidArgument,
         "the nccl transport runs one rank per GPU, but the stages' devices repeat one; give "
         "every stage its own device (--devices 0,1,2,3) or use the local transport for stages "
         "that share a GPU");
  }
  ranks_ = connected_ranks(devices_, timeout_);
}

NcclWorld::~NcclWorld() {
  for (NcclCommunicator& rank : ranks_)
    rank.abort();
}

NcclCommunicator& NcclWorld::rank(int stage) {
  if (ranks_.empty()) {
    fail(ErrorCode::kCommunication,
         "the NCCL communicator could not be created again after a failed step (see the earlier "
         "error); the next step retries; check the GPUs or reopen the engine");
  }
  return ranks_.at(static_cast<size_t>(stage));
}

void NcclWorld::recover() {
  bool healthy = !ranks_.empty();
  for (const NcclCommunicator& rank : ranks_)
    healthy = healthy && !rank.aborted();
  if (healthy && !failed_.load()) return;
  for (NcclCommunicator& rank : ranks_)
    rank.abort();
  ranks_.clear();
  // Cleared only once the world is whole again: a failed rebuild is retried at the next reset.
  ranks_ = connected_ranks(devices_, timeout_);
  failed_.store(false);
}

NcclRowSender::NcclRowSender(int device, int peer, int capacity)
    : device_(device), peer_(peer), capacity_(capacity), stream_(stream_on(device)) {}

void NcclRowSender::send(NcclCommunicator& comm, const CudaActivations& rows,
                         const std::function<void()>& announce, std::chrono::milliseconds timeout,
                         const std::atomic<bool>* cancelled) {
  set_device(device_);
  const NcclTransfer transfer{.kind = NcclTransfer::Kind::kSend,
                              .local_rank = 0,
                              .peer = peer_,
                              .buffer = rows.data(),
                              .bytes = rows.bytes(),
                              .stream = stream_.get()};
  if (unconfirmed_ >= capacity_) {
    // Bounded like a host link: the receiver has taken the earlier rows before more are sent.
    comm.wait(std::span<const NcclTransfer>(&transfer, 1), timeout, cancelled);
    unconfirmed_ = 0;
  }
  announce();
  rows.wait_ready(stream_.get());
  comm.enqueue(std::span<const NcclTransfer>(&transfer, 1), timeout, cancelled);
  // The producer reuses the slot once `consumed` fires, after the send read it.
  rows.record_consumed(device_, stream_.get());
  ++unconfirmed_;
}

NcclRowReceiver::NcclRowReceiver(int device, int peer, int64_t max_tokens, int64_t hidden,
                                 int capacity)
    : device_(device),
      peer_(peer),
      max_tokens_(max_tokens),
      stream_(stream_on(device)),
      pool_(device, max_tokens, hidden, capacity + 1) {}

std::shared_ptr<CudaActivations> NcclRowReceiver::recv(NcclCommunicator& comm, int64_t n_tokens,
                                                       int32_t micro_batch, const std::string& link,
                                                       std::chrono::milliseconds timeout,
                                                       const std::atomic<bool>* cancelled) {
  if (n_tokens > max_tokens_) {
    fail(ErrorCode::kCommunication, "micro-batch {} has {} rows but {} holds at most {}",
         micro_batch, n_tokens, link, max_tokens_);
  }
  set_device(device_);
  std::shared_ptr<CudaActivations> rows = pool_.acquire(n_tokens, stream_.get());
  const NcclTransfer transfer{.kind = NcclTransfer::Kind::kRecv,
                              .local_rank = 0,
                              .peer = peer_,
                              .buffer = rows->data(),
                              .bytes = rows->bytes(),
                              .stream = stream_.get()};
  comm.enqueue(std::span<const NcclTransfer>(&transfer, 1), timeout, cancelled);
  comm.wait(std::span<const NcclTransfer>(&transfer, 1), timeout, cancelled);
  rows->record_ready(stream_.get());
  return rows;
}

const CudaActivations& cuda_rows_of(const LinkMessage& message, int device, int64_t hidden,
                                    const std::string& link) {
  const auto* rows = dynamic_cast<const CudaActivations*>(message.activations.device.get());
  if (rows == nullptr || rows->device() != device || rows->hidden() != hidden) {
    fail(ErrorCode::kCommunication,
         "{} carries CUDA activations of hidden size {} on device {}; micro-batch {} brought "
         "something else (NCCL links need the cuda backend)",
         link, hidden, device, message.micro_batch);
  }
  return *rows;
}

NcclLink::NcclLink(std::shared_ptr<NcclWorld> world, int from, int64_t max_tokens, int64_t hidden,
                   int capacity)
    : world_(std::move(world)),
      from_(from),
      to_(from + 1),
      hidden_(hidden),
      announcements_(capacity),
      sender_(world_->device(from_), to_, capacity),
      receiver_(world_->device(to_), from_, max_tokens, hidden, capacity) {}

void NcclLink::send(LinkMessage&& message, std::chrono::milliseconds timeout) {
  if (cancelled_.load()) {
    fail(ErrorCode::kAborted, "NCCL link {} -> {} was cancelled", from_, to_);
  }
  if (message.aborted) {  // a stand-in without rows: only the announcement travels
    message.activations = {};
    announcements_.send(std::move(message), timeout);
    return;
  }
  const CudaActivations& rows = cuda_rows_of(message, world_->device(from_), hidden_,
                                             fmt::format("the NCCL link {} -> {}", from_, to_));
  // The rows stay alive (`held`) until their send is enqueued; the announcement goes ahead.
  const std::shared_ptr<DeviceActivations> held = std::move(message.activations.device);
  sender_.send(
      world_->rank(from_), rows,
      [&] {
        message.activations.device = std::make_shared<Announcement>(rows.n_tokens(), hidden_);
        announcements_.send(std::move(message), timeout);
      },
      timeout, &cancelled_);
}

LinkMessage NcclLink::recv(std::chrono::milliseconds timeout) {
  LinkMessage message = announcements_.recv(timeout);
  if (message.aborted) return message;
  const auto* announced = dynamic_cast<const Announcement*>(message.activations.device.get());
  CONVEYOR_ASSERT(announced != nullptr);
  message.activations.device =
      receiver_.recv(world_->rank(to_), announced->n_tokens, message.micro_batch,
                     fmt::format("the NCCL link {} -> {}", from_, to_), timeout, &cancelled_);
  return message;
}

void NcclLink::cancel() {
  cancelled_.store(true);
  world_->mark_failed();
  announcements_.cancel();
}

void NcclLink::reset() {
  announcements_.reset();
  cancelled_.store(false);
  sender_.reset();
  world_->recover();
}

}  // namespace conveyor::cuda
