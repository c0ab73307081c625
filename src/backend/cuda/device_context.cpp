// DeviceContext and its RAII pieces: device buffers, pinned buffers, events, the workspace plan.
#include "backend/cuda/device_context.hpp"

#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

namespace {

constexpr size_t kAlignment = 256;

size_t round_up(size_t bytes) {
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

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

// ---- WorkspacePlan ---------------------------------------------------------------------------

size_t WorkspacePlan::total() const {
  size_t sum = 0;
  for (size_t bytes : {normed, q, k, v, attn, gate, up, indices, decode, head_x, logits, params,
                       tokens, graph_x}) {
    sum += round_up(bytes);
  }
  return sum;
}

WorkspacePlan plan_workspace(const ModelConfig& config, DType dtype, int64_t max_tokens,
                             int32_t max_seqs, int64_t max_context, bool with_head,
                             int64_t graph_rows) {
  CONVEYOR_ASSERT(max_tokens > 0 && max_seqs > 0 && max_context > 0);
  CONVEYOR_ASSERT(graph_rows >= 0 && graph_rows <= max_tokens);
  const auto half = static_cast<size_t>(dtype_size(dtype));
  const auto rows = static_cast<size_t>(max_tokens);
  WorkspacePlan plan;
  plan.max_tokens = max_tokens;
  plan.max_context = max_context;
  // Decode rows of one launch: one per sequence slot, at most 64 (the split workspace grows
  // with rows x context), never more than the micro-batch.
  plan.decode_rows = std::min<int64_t>({static_cast<int64_t>(max_seqs), 64, max_tokens});
  plan.normed = rows * static_cast<size_t>(config.hidden_size) * half;
  plan.q = rows * static_cast<size_t>(config.q_dim()) * half;
  plan.k = rows * static_cast<size_t>(config.kv_dim()) * half;
  plan.v = plan.k;
  plan.attn = plan.q;
  plan.gate = rows * static_cast<size_t>(config.intermediate_size) * half;
  plan.up = plan.gate;
  plan.indices = 4 * rows * sizeof(int32_t);
  kernels::DecodeAttentionArgs decode{.dtype = dtype,
                                      .n_seqs = plan.decode_rows,
                                      .n_heads = config.n_heads,
                                      .n_kv_heads = config.n_kv_heads,
                                      .head_dim = config.head_dim,
                                      .max_keys = max_context};
  plan.decode = kernels::decode_attention_workspace_bytes(decode);
  if (with_head) {
    plan.head_rows = std::min<int64_t>(max_tokens, std::max<int64_t>(max_seqs, 64));
    const auto head_rows = static_cast<size_t>(plan.head_rows);
    plan.head_x = head_rows * static_cast<size_t>(config.hidden_size) * sizeof(float);
    plan.logits = head_rows * static_cast<size_t>(config.vocab_size) * sizeof(float);
    plan.params = head_rows * sizeof(kernels::SampleRowParams);
    plan.tokens = head_rows * sizeof(int32_t);
  }
  plan.graph_rows = graph_rows;
  plan.graph_x =
      static_cast<size_t>(graph_rows) * static_cast<size_t>(config.hidden_size) * sizeof(float);
  return plan;
}

// ---- DeviceContext ---------------------------------------------------------------------------

DeviceContext::DeviceContext(int device, const WorkspacePlan& plan) : device_(device), plan_(plan) {
  CONVEYOR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    gemm_ = std::make_unique<Gemm>();
    memory_ = DeviceBuffer(device, plan.total(), "the stage workspace");
  } catch (...) {
    cudaStreamDestroy(stream_);
    throw;
  }
  auto* base = memory_.as<char>();
  size_t offset = 0;
  auto carve = [&](size_t bytes) -> void* {
    if (bytes == 0) return nullptr;
    void* p = base + offset;
    offset += round_up(bytes);
    return p;
  };
  workspace_.normed = carve(plan.normed);
  workspace_.q = carve(plan.q);
  workspace_.k = carve(plan.k);
  workspace_.v = carve(plan.v);
  workspace_.attn = carve(plan.attn);
  workspace_.gate = carve(plan.gate);
  workspace_.up = carve(plan.up);
  workspace_.indices = static_cast<int32_t*>(carve(plan.indices));
  workspace_.decode = carve(plan.decode);
  workspace_.head_x = static_cast<float*>(carve(plan.head_x));
  workspace_.logits = static_cast<float*>(carve(plan.logits));
  workspace_.params = static_cast<kernels::SampleRowParams*>(carve(plan.params));
  workspace_.tokens = static_cast<int32_t*>(carve(plan.tokens));
  workspace_.graph_x = static_cast<float*>(carve(plan.graph_x));
  CONVEYOR_ASSERT(offset <= memory_.bytes());
}

DeviceContext::~DeviceContext() {
  synchronize_noexcept();
  gemm_.reset();
  memory_ = DeviceBuffer();
  if (stream_ != nullptr) {
    const cudaError_t result = cudaStreamDestroy(stream_);
    if (result != cudaSuccess) {
      spdlog::warn("cudaStreamDestroy on CUDA device {} failed: {}", device_,
                   cudaGetErrorString(result));
    }
  }
}

size_t DeviceContext::bytes() const {
  return memory_.bytes() + (gemm_ ? gemm_->workspace_bytes() : 0);
}

void DeviceContext::synchronize() const {
  CONVEYOR_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void DeviceContext::synchronize_noexcept() const noexcept {
  if (stream_ == nullptr) return;
  cudaSetDevice(device_);
  const cudaError_t result = cudaStreamSynchronize(stream_);
  if (result != cudaSuccess) {
    spdlog::warn("cudaStreamSynchronize on CUDA device {} failed: {}", device_,
                 cudaGetErrorString(result));
  }
}

}  // namespace conveyor::cuda
