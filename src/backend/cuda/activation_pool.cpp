// ActivationPool and CudaActivations: slots, ready/consumed events and their release.
#include "backend/cuda/activation_pool.hpp"

#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

ActivationSlot::ActivationSlot(int device_id, size_t bytes)
    : buffer(device_id, bytes, "stage activations"), ready(device_id), device(device_id) {}

CudaActivations::CudaActivations(std::shared_ptr<ActivationSlot> slot, int64_t n_tokens,
                                 int64_t hidden)
    : slot_(std::move(slot)), n_tokens_(n_tokens), hidden_(hidden) {}

CudaActivations::~CudaActivations() {
  // Release: the consumer's writes of `consumed` happen before the producer's next acquire.
  slot_->in_use.store(false, std::memory_order_release);
}

void CudaActivations::record_ready(cudaStream_t stream) const {
  CONVEYOR_CUDA_CHECK(cudaEventRecord(slot_->ready.get(), stream));
}

void CudaActivations::wait_ready(cudaStream_t stream) const {
  CONVEYOR_CUDA_CHECK(cudaStreamWaitEvent(stream, slot_->ready.get(), 0));
}

void CudaActivations::record_consumed(int device, cudaStream_t stream) const {
  ActivationSlot& slot = *slot_;
  if (slot.consumed.get() == nullptr || slot.consumed.device() != device) {
    // First use, or another consumer device than last time (the same slot always goes to the
    // next stage, so this is rare): an event is recorded on a stream of its own device only.
    slot.consumed = Event();  // frees the old one on its device
    CONVEYOR_CUDA_CHECK(cudaSetDevice(device));
    slot.consumed = Event(device);
  }
  CONVEYOR_CUDA_CHECK(cudaEventRecord(slot.consumed.get(), stream));
}

ActivationPool::ActivationPool(int device, int64_t max_tokens, int64_t hidden, int n_slots)
    : device_(device), max_tokens_(max_tokens), hidden_(hidden) {
  for (int i = 0; i < n_slots; ++i) {
    slots_.push_back(std::make_shared<ActivationSlot>(device, bytes_for(max_tokens, hidden, 1)));
  }
}

size_t ActivationPool::bytes_for(int64_t max_tokens, int64_t hidden, int n_slots) {
  return static_cast<size_t>(n_slots) * static_cast<size_t>(max_tokens * hidden) * sizeof(float);
}

std::shared_ptr<CudaActivations> ActivationPool::acquire(int64_t n_tokens, cudaStream_t stream) {
  CONVEYOR_ASSERT(n_tokens > 0 && n_tokens <= max_tokens_);
  // Round robin from the slot after the last one taken: the least recently produced free slot,
  // whose `consumed` event is the most likely to have fired already (a slot freed just now may
  // still be read by a copy or a transfer in flight, and waiting for it would serialize the
  // producer with its consumer).
  std::shared_ptr<ActivationSlot> chosen;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const size_t index = (next_ + i) % slots_.size();
    bool expected = false;
    if (slots_[index]->in_use.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
      chosen = slots_[index];
      next_ = (index + 1) % slots_.size();
      break;
    }
  }
  if (!chosen) {
    chosen = std::make_shared<ActivationSlot>(device_, bytes_for(max_tokens_, hidden_, 1));
    chosen->in_use.store(true, std::memory_order_relaxed);
    slots_.push_back(chosen);
    spdlog::info(
        "CUDA device {}: every activation buffer of a stage is in flight; the pool grew "
        "to {} buffers of {:.1f} MiB",
        device_, slots_.size(),
        static_cast<double>(bytes_for(max_tokens_, hidden_, 1)) / (1 << 20));
  }
  // The handle exists before any call that may throw, so an error releases the slot.
  auto handle = std::make_shared<CudaActivations>(chosen, n_tokens, hidden_);
  if (chosen->consumed.get() != nullptr) {
    CONVEYOR_CUDA_CHECK(cudaStreamWaitEvent(stream, chosen->consumed.get(), 0));
  }
  return handle;
}

size_t ActivationPool::bytes() const {
  return bytes_for(max_tokens_, hidden_, static_cast<int>(slots_.size()));
}

}  // namespace conveyor::cuda
