// NcclWorld and NcclLink: pipeline links over NCCL send/recv between stages on distinct GPUs.
#include "backend/cuda/nccl_link.hpp"

#include <cuda_runtime_api.h>
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

cudaStream_t make_stream(int device) {
  set_device(device);
  cudaStream_t stream = nullptr;
  CONVEYOR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void destroy_stream(int device, cudaStream_t stream) noexcept {
  if (stream == nullptr) return;
  cudaSetDevice(device);
  const cudaError_t result = cudaStreamDestroy(stream);
  if (result != cudaSuccess) {
    spdlog::warn("cudaStreamDestroy on CUDA device {} failed: {}", device,
                 cudaGetErrorString(result));
  }
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
  ranks_ = NcclCommunicator::init_all(devices_, timeout_).split();
}

NcclWorld::~NcclWorld() {
  for (NcclCommunicator& rank : ranks_)
    rank.abort();
}

void NcclWorld::recover() {
  bool aborted = false;
  for (const NcclCommunicator& rank : ranks_)
    aborted = aborted || rank.aborted();
  if (!failed_.exchange(false) && !aborted) return;
  for (NcclCommunicator& rank : ranks_)
    rank.abort();
  ranks_.clear();
  ranks_ = NcclCommunicator::init_all(devices_, timeout_).split();
}

NcclLink::NcclLink(std::shared_ptr<NcclWorld> world, int from, int64_t max_tokens, int64_t hidden,
                   int capacity)
    : world_(std::move(world)),
      from_(from),
      to_(from + 1),
      max_tokens_(max_tokens),
      hidden_(hidden),
      capacity_(capacity),
      announcements_(capacity),
      send_stream_(make_stream(world_->device(from_))),
      recv_stream_(make_stream(world_->device(to_))),
      // The receiver holds at most `capacity` announced buffers plus the one its stage reads.
      pool_(world_->device(to_), max_tokens, hidden, capacity + 1) {}

NcclLink::~NcclLink() {
  destroy_stream(world_->device(from_), send_stream_);
  destroy_stream(world_->device(to_), recv_stream_);
}

void NcclLink::send(LinkMessage&& message, std::chrono::milliseconds timeout) {
  if (cancelled_.load()) {
    fail(ErrorCode::kAborted, "NCCL link {} -> {} was cancelled", from_, to_);
  }
  const auto* source = dynamic_cast<const CudaActivations*>(message.activations.device.get());
  if (source == nullptr || source->device() != world_->device(from_) ||
      source->hidden() != hidden_) {
    fail(ErrorCode::kCommunication,
         "the NCCL link {} -> {} carries CUDA activations of hidden size {} on device {}; "
         "micro-batch {} brought something else (the nccl transport needs the cuda backend)",
         from_, to_, hidden_, world_->device(from_), message.micro_batch);
  }
  set_device(world_->device(from_));
  NcclCommunicator& rank = world_->rank(from_);
  const NcclTransfer transfer{.kind = NcclTransfer::Kind::kSend,
                              .local_rank = 0,
                              .peer = to_,
                              .buffer = source->data(),
                              .bytes = source->bytes(),
                              .stream = send_stream_};
  if (unconfirmed_sends_ >= capacity_) {
    // Bounded like a host link: the receiver has taken the earlier rows before more are sent.
    rank.wait(std::span<const NcclTransfer>(&transfer, 1), timeout, &cancelled_);
    unconfirmed_sends_ = 0;
  }
  source->wait_ready(send_stream_);
  rank.enqueue(std::span<const NcclTransfer>(&transfer, 1), timeout);
  source->record_consumed(world_->device(from_), send_stream_);
  ++unconfirmed_sends_;
  // The producer's slot is free to reuse once `consumed` fires; the handle can go now.
  const int64_t n_tokens = source->n_tokens();
  message.activations.device = std::make_shared<Announcement>(n_tokens, hidden_);
  announcements_.send(std::move(message), timeout);
}

LinkMessage NcclLink::recv(std::chrono::milliseconds timeout) {
  LinkMessage message = announcements_.recv(timeout);
  const auto* announced = dynamic_cast<const Announcement*>(message.activations.device.get());
  CONVEYOR_ASSERT(announced != nullptr);
  const int64_t n_tokens = announced->n_tokens;
  if (n_tokens > max_tokens_) {
    fail(ErrorCode::kCommunication,
         "micro-batch {} has {} rows but the NCCL link {} -> {} holds at most {}",
         message.micro_batch, n_tokens, from_, to_, max_tokens_);
  }
  set_device(world_->device(to_));
  std::shared_ptr<CudaActivations> rows = pool_.acquire(n_tokens, recv_stream_);
  const NcclTransfer transfer{.kind = NcclTransfer::Kind::kRecv,
                              .local_rank = 0,
                              .peer = from_,
                              .buffer = rows->data(),
                              .bytes = rows->bytes(),
                              .stream = recv_stream_};
  NcclCommunicator& rank = world_->rank(to_);
  rank.enqueue(std::span<const NcclTransfer>(&transfer, 1), timeout);
  // Deadline-bounded: a dead sender ends in kTimeout (rank aborted), never in a hang.
  rank.wait(std::span<const NcclTransfer>(&transfer, 1), timeout, &cancelled_);
  rows->record_ready(recv_stream_);
  message.activations.device = std::move(rows);
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
  unconfirmed_sends_ = 0;  // after a success every send was received; after a failure, aborted
  world_->recover();
}

}  // namespace conveyor::cuda
