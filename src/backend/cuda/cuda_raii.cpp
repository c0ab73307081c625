// The CUDA RAII kit: DeviceBuffer, PinnedBuffer, Event, Stream.
#include "backend/cuda/cuda_raii.hpp"

#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {
namespace {

double mib(size_t bytes) {
  return static_cast<double>(bytes) / (1 << 20);
}

}  // namespace

void set_device(int device) {
  CONVEYOR_CUDA_CHECK(cudaSetDevice(device));
}

// ---- DeviceBuffer ----------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(int device, size_t bytes, const char* what) : device_(device) {
  const size_t size = std::max<size_t>(bytes, 1);
  const cudaError_t result = cudaMalloc(&data_, size);
  if (result != cudaSuccess) {
    data_ = nullptr;
    cudaGetLastError();  // clear the error so later calls do not report it
    fail(result == cudaErrorMemoryAllocation ? ErrorCode::kOutOfMemory : ErrorCode::kDevice,
         "cudaMalloc of {:.1f} MiB for {} on CUDA device {} failed: {}; free device memory or "
         "lower --max-context / --max-batch",
         mib(size), what, device, cudaGetErrorString(result));
  }
  bytes_ = size;
}

DeviceBuffer::~DeviceBuffer() {
  reset();
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      device_(other.device_) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

void DeviceBuffer::reset() noexcept {
  if (data_ == nullptr) return;
  // cudaFree synchronizes the device, so kernels still reading the buffer finish first.
  cudaSetDevice(device_);
  const cudaError_t result = cudaFree(data_);
  if (result != cudaSuccess) {
    spdlog::warn("cudaFree of {:.1f} MiB on CUDA device {} failed: {}", mib(bytes_), device_,
                 cudaGetErrorString(result));
  }
  data_ = nullptr;
  bytes_ = 0;
}

// ---- PinnedBuffer ----------------------------------------------------------------------------

PinnedBuffer::PinnedBuffer(size_t bytes, const char* what) {
  const size_t size = std::max<size_t>(bytes, 1);
  const cudaError_t result = cudaHostAlloc(&data_, size, cudaHostAllocPortable);
  if (result != cudaSuccess) {
    data_ = nullptr;
    cudaGetLastError();
    fail(ErrorCode::kOutOfMemory,
         "cudaHostAlloc of {:.1f} MiB of pinned host memory for {} failed: {}", mib(size), what,
         cudaGetErrorString(result));
  }
  bytes_ = size;
}

PinnedBuffer::~PinnedBuffer() {
  reset();
}

PinnedBuffer::PinnedBuffer(PinnedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void PinnedBuffer::reset() noexcept {
  if (data_ == nullptr) return;
  const cudaError_t result = cudaFreeHost(data_);
  if (result != cudaSuccess) {
    spdlog::warn("cudaFreeHost of {:.1f} MiB failed: {}", mib(bytes_), cudaGetErrorString(result));
  }
  data_ = nullptr;
  bytes_ = 0;
}

// ---- Event -----------------------------------------------------------------------------------

Event::Event(int device) : device_(device) {
  CONVEYOR_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
}

Event::~Event() {
  reset();
}

Event::Event(Event&& other) noexcept
    : event_(std::exchange(other.event_, nullptr)), device_(other.device_) {}

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    reset();
    event_ = std::exchange(other.event_, nullptr);
    device_ = other.device_;
  }
  return *this;
}

void Event::reset() noexcept {
  if (event_ == nullptr) return;
  cudaSetDevice(device_);
  const cudaError_t result = cudaEventDestroy(event_);
  if (result != cudaSuccess) {
    spdlog::warn("cudaEventDestroy on CUDA device {} failed: {}", device_,
                 cudaGetErrorString(result));
  }
  event_ = nullptr;
}

// ---- Stream ----------------------------------------------------------------------------------

Stream::Stream(int device) : device_(device) {
  CONVEYOR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

Stream::~Stream() {
  reset();
}

Stream::Stream(Stream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), device_(other.device_) {}

Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    reset();
    stream_ = std::exchange(other.stream_, nullptr);
    device_ = other.device_;
  }
  return *this;
}

void Stream::synchronize() const {
  CONVEYOR_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void Stream::synchronize_noexcept() const noexcept {
  if (stream_ == nullptr) return;
  cudaSetDevice(device_);
  const cudaError_t result = cudaStreamSynchronize(stream_);
  if (result != cudaSuccess) {
    spdlog::warn("cudaStreamSynchronize on CUDA device {} failed: {}", device_,
                 cudaGetErrorString(result));
  }
}

void Stream::reset() noexcept {
  if (stream_ == nullptr) return;
  cudaSetDevice(device_);
  const cudaError_t result = cudaStreamDestroy(stream_);
  if (result != cudaSuccess) {
    spdlog::warn("cudaStreamDestroy on CUDA device {} failed: {}", device_,
                 cudaGetErrorString(result));
  }
  stream_ = nullptr;
}

}  // namespace conveyor::cuda
