// The RAII kit every piece of CUDA host code is built from: device buffers, pinned host
// buffers, events and non-blocking streams, each owned by one object and freed (never throwing)
// on destruction. No CUDA header: events and streams are opaque handles.
#pragma once

#include <cstddef>

typedef struct CUevent_st* cudaEvent_t;
typedef struct CUstream_st* cudaStream_t;

namespace conveyor::cuda {

// cudaSetDevice(device) for the calling thread; throws conveyor::Error(kDevice). Stage entry
// points call it first: a worker thread may run stages of several devices over its life, and
// commit/rollback run on the engine's thread.
void set_device(int device);

// Device memory from cudaMalloc (never managed memory), freed on destruction. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Allocates `bytes` (>= 1) on `device`, which must be current. Throws kOutOfMemory naming
  // `what`, the size and the device.
  DeviceBuffer(int device, size_t bytes, const char* what);
  ~DeviceBuffer();  // never throws; logs a failure to free
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void reset() noexcept;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  int device_ = -1;
};

// Page-locked host memory (cudaHostAlloc, portable), so copies on a stream are truly
// asynchronous. The caller must not overwrite it while a copy from it is in flight.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(size_t bytes, const char* what);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept;
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void reset() noexcept;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A timing-free event created on `device` (which must be current). Move-only.
class Event {
 public:
  Event() = default;
  explicit Event(int device);
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  cudaEvent_t get() const { return event_; }
  int device() const { return device_; }

 private:
  void reset() noexcept;
  cudaEvent_t event_ = nullptr;
  int device_ = -1;
};

// A non-blocking stream created on `device` (which must be current), destroyed with the object.
// Every asynchronous call of conveyor takes one of these: nothing uses the legacy default stream.
class Stream {
 public:
  Stream() = default;
  explicit Stream(int device);
  ~Stream();  // never throws
  Stream(Stream&& other) noexcept;
  Stream& operator=(Stream&& other) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  cudaStream_t get() const { return stream_; }
  int device() const { return device_; }
  // Waits until everything enqueued finished; throws kDevice on an error.
  void synchronize() const;
  // Same, for failure paths and destructors: logs instead of throwing.
  void synchronize_noexcept() const noexcept;

 private:
  void reset() noexcept;
  cudaStream_t stream_ = nullptr;
  int device_ = -1;
};

}  // namespace conveyor::cuda
