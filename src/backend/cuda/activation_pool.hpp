// Device activations between CUDA stages: CudaActivations (the DeviceActivations handle the
// pipeline's links move from stage to stage) and the ActivationPool of fp32 buffers a stage
// produces them in. Ownership protocol: docs in this header, the one place it is described.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda/device_context.hpp"
#include "backend/stage_backend.hpp"

namespace conveyor::cuda {

// Buffer ownership between stages (producer P, consumer C, possibly on another device):
// 1. P acquires a free slot of its pool, makes its stream wait on the slot's `consumed` event
//    (the previous consumer's reads), writes the micro-batch's residual rows and records `ready`.
// 2. The handle travels through the runtime (P's map, the link, C's map). Nobody touches the
//    bytes meanwhile.
// 3. C makes its stream wait on `ready`, copies the rows into its own buffer (same device:
//    cudaMemcpyAsync; another device: cudaMemcpyPeerAsync), records `consumed` on its stream and
//    drops the handle at once; dropping it marks the slot free. The last stage's sample() reads
//    its own compute output in place and records `consumed` after its reads.
// So a slot is in flight from P's compute to C's compute: at most link capacity + 2 per stage
// (one computed but not sent, `capacity` in the link, one received but not computed). The pool
// starts with that many (default link capacity 2) and grows when a plan holds more; it never
// blocks. A handle dropped unread (a failed step) frees its slot too; reads of it may still be in
// flight on the failed stage's stream, so within the failed step the producer may overwrite rows
// that are read (the step's results are discarded), and before the next step the pipeline rolls
// every stage back, which synchronizes its stream.
struct ActivationSlot {
  DeviceBuffer buffer;  // [max_tokens, hidden] fp32 (the residual stream)
  Event ready;          // on the producer's device; recorded after the producer's last write
  // Recorded by the consumer after its last read, on the consumer's device (created there on
  // first use). Written only by the thread holding the handle.
  Event consumed;
  std::atomic<bool> in_use{false};
  int device = -1;

  ActivationSlot(int device, size_t bytes);
  ActivationSlot(const ActivationSlot&) = delete;
  ActivationSlot& operator=(const ActivationSlot&) = delete;
};

// One micro-batch's activations [n_tokens, hidden] fp32 on a device. Releases its slot to the
// producer's pool on destruction (from any thread).
class CudaActivations final : public DeviceActivations {
 public:
  CudaActivations(std::shared_ptr<ActivationSlot> slot, int64_t n_tokens, int64_t hidden);
  ~CudaActivations() override;

  int device() const { return slot_->device; }
  float* data() const { return slot_->buffer.as<float>(); }  // [n_tokens, hidden]
  int64_t n_tokens() const { return n_tokens_; }
  int64_t hidden() const { return hidden_; }
  size_t bytes() const { return static_cast<size_t>(n_tokens_ * hidden_) * sizeof(float); }

  // Producer: the rows are complete once `stream` (of the slot's device) reaches this point.
  void record_ready(cudaStream_t stream) const;
  // Consumer: `stream` waits for the producer's writes (works across devices).
  void wait_ready(cudaStream_t stream) const;
  // Consumer: its reads end once `stream` (of `device`, current) reaches this point.
  void record_consumed(int device, cudaStream_t stream) const;

 private:
  std::shared_ptr<ActivationSlot> slot_;
  int64_t n_tokens_;
  int64_t hidden_;
};

// Not thread-safe to acquire from (the producer's worker only); slots are released from any
// thread through the handles.
class ActivationPool {
 public:
  // `device` must be current. Allocates `n_slots` buffers of [max_tokens, hidden] fp32.
  ActivationPool(int device, int64_t max_tokens, int64_t hidden, int n_slots);

  // Bytes one pool of `n_slots` takes (for the memory check).
  static size_t bytes_for(int64_t max_tokens, int64_t hidden, int n_slots);

  // A handle on a free slot for `n_tokens` rows; `stream` waits for the slot's last consumer.
  // Grows the pool (cudaMalloc) when every slot is in flight.
  std::shared_ptr<CudaActivations> acquire(int64_t n_tokens, cudaStream_t stream);

  size_t bytes() const;

 private:
  int device_;
  int64_t max_tokens_;
  int64_t hidden_;
  std::vector<std::shared_ptr<ActivationSlot>> slots_;
  size_t next_ = 0;  // where the next acquire starts looking (round robin)
};

}  // namespace conveyor::cuda
