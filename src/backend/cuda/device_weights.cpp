// DeviceWeights: the one allocation of a stage's weights, filled by host fp32 -> bf16/fp16
// conversion and upload, or by the random-fill kernel.
#include "backend/cuda/device_weights.hpp"

#include <cuda_runtime_api.h>

#include "core/check.hpp"
#include "core/dtype_convert.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/kernels.hpp"

namespace conveyor::cuda {

namespace {

constexpr size_t kAlignment = 256;

int64_t numel(const std::vector<float>& tensor) {
  return static_cast<int64_t>(tensor.size());
}
int64_t numel(const TensorDraw& draw) {
  return draw.numel;
}

size_t aligned_bytes(int64_t numel, DType dtype) {
  const size_t bytes = static_cast<size_t>(numel) * dtype_size(dtype);
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

// Calls visit(source tensor, device pointer slot) for every tensor of the stage, in one order.
// Absent tensors (biases the model lacks, parts another stage holds) are visited too: they get
// no bytes and keep a null pointer.
template <typename T, typename Visit>
void for_each_tensor(const StageTensors<T>& source, StageTensors<const void*>& device,
                     Visit&& visit) {
  device.spec = source.spec;
  device.layers.resize(source.layers.size());
  visit(source.embedding, device.embedding);
  for (size_t l = 0; l < source.layers.size(); ++l) {
    zip_layer_tensors(source.layers[l], device.layers[l],
                      [&](size_t, const T& tensor, const void*& slot) { visit(tensor, slot); });
  }
  visit(source.final_norm, device.final_norm);
  visit(source.lm_head, device.lm_head);
}

template <typename T>
int64_t total_bytes(const StageTensors<T>& source, DType dtype) {
  StageTensors<const void*> unused;
  size_t total = 0;
  for_each_tensor(source, unused, [&](const T& tensor, const void*&) {
    total += aligned_bytes(numel(tensor), dtype);
  });
  return static_cast<int64_t>(total);
}

// Hands out consecutive aligned pieces of one allocation.
class Carver {
 public:
  Carver(const DeviceBuffer& memory, DType dtype) : memory_(memory), dtype_(dtype) {}
  void* take(int64_t numel) {
    void* piece = memory_.as<char>() + offset_;
    offset_ += aligned_bytes(numel, dtype_);
    CONVEYOR_ASSERT(offset_ <= memory_.bytes());
    return piece;
  }

 private:
  const DeviceBuffer& memory_;
  DType dtype_;
  size_t offset_ = 0;
};

}  // namespace

int64_t DeviceWeights::device_bytes(const StageWeights& weights, DType dtype) {
  return total_bytes(weights, dtype);
}
int64_t DeviceWeights::device_bytes(const StageDraws& draws, DType dtype) {
  return total_bytes(draws, dtype);
}

DeviceWeights::DeviceWeights(int device, const StageWeights& weights, DType dtype,
                             cudaStream_t stream)
    : memory_(device, static_cast<size_t>(device_bytes(weights, dtype)), "the stage weights") {
  CONVEYOR_ASSERT(dtype == DType::kBF16 || dtype == DType::kF16);
  Carver carver(memory_, dtype);
  std::vector<uint16_t> staging;
  for_each_tensor(weights, tensors_, [&](const std::vector<float>& tensor, const void*& slot) {
    if (tensor.empty()) return;
    // The previous tensor's copy reads `staging` until it lands: wait before rewriting it.
    CONVEYOR_CUDA_CHECK(cudaStreamSynchronize(stream));
    staging.resize(tensor.size());
    for (size_t i = 0; i < tensor.size(); ++i) {
      staging[i] = dtype == DType::kBF16 ? f32_to_bf16(tensor[i]) : f32_to_f16(tensor[i]);
    }
    void* destination = carver.take(numel(tensor));
    CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(destination, staging.data(),
                                        staging.size() * sizeof(uint16_t), cudaMemcpyHostToDevice,
                                        stream));
    slot = destination;
  });
  CONVEYOR_CUDA_CHECK(cudaStreamSynchronize(stream));
  share_tied_head();
}

DeviceWeights::DeviceWeights(int device, const StageDraws& draws, DType dtype, cudaStream_t stream)
    : memory_(device, static_cast<size_t>(device_bytes(draws, dtype)), "the stage weights") {
  CONVEYOR_ASSERT(dtype == DType::kBF16 || dtype == DType::kF16);
  Carver carver(memory_, dtype);
  for_each_tensor(draws, tensors_, [&](const TensorDraw& draw, const void*& slot) {
    if (draw.numel == 0) return;
    void* destination = carver.take(draw.numel);
    kernels::launch_random_fill({.dtype = dtype,
                                 .out = destination,
                                 .numel = draw.numel,
                                 .key = draw.key,
                                 .mean = draw.mean,
                                 .half_width = draw.half_width},
                                stream);
    slot = destination;
  });
  CONVEYOR_CUDA_CHECK(cudaStreamSynchronize(stream));
  share_tied_head();
}

void DeviceWeights::share_tied_head() {
  if (tensors_.spec.head && tensors_.lm_head == nullptr) tensors_.lm_head = tensors_.embedding;
}

}  // namespace conveyor::cuda
