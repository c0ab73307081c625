// DeviceWeights: host fp32 -> bf16/fp16 conversion and the one upload of a stage's weights.
#include "backend/cuda/device_weights.hpp"

#include <cuda_runtime_api.h>

#include <functional>

#include "core/check.hpp"
#include "core/dtype_convert.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

namespace {

constexpr size_t kAlignment = 256;

size_t aligned_bytes(const std::vector<float>& tensor, DType dtype) {
  const size_t bytes = tensor.size() * dtype_size(dtype);
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

// Calls visit(host tensor, device pointer slot) for every tensor of the stage, in one order.
// Empty tensors (absent biases, or parts another stage holds) are visited too: they get no
// bytes and keep a null pointer.
using Visitor = std::function<void(const std::vector<float>&, const void**)>;

void for_each_tensor(const StageWeights& w, std::vector<DeviceLayerWeights>& layers,
                     const void** embedding, const void** final_norm, const void** lm_head,
                     const Visitor& visit) {
  visit(w.embedding, embedding);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& h = w.layers[l];
    DeviceLayerWeights& d = layers[l];
    visit(h.attn_norm, &d.attn_norm);
    visit(h.wq, &d.wq);
    visit(h.wk, &d.wk);
    visit(h.wv, &d.wv);
    visit(h.bq, &d.bq);
    visit(h.bk, &d.bk);
    visit(h.bv, &d.bv);
    visit(h.wo, &d.wo);
    visit(h.mlp_norm, &d.mlp_norm);
    visit(h.w_gate, &d.w_gate);
    visit(h.w_up, &d.w_up);
    visit(h.w_down, &d.w_down);
  }
  visit(w.final_norm, final_norm);
  visit(w.lm_head, lm_head);
}

}  // namespace

int64_t DeviceWeights::device_bytes(const StageWeights& weights, DType dtype) {
  std::vector<DeviceLayerWeights> layers(weights.layers.size());
  const void* unused[3] = {};
  size_t total = 0;
  for_each_tensor(weights, layers, &unused[0], &unused[1], &unused[2],
                  [&](const std::vector<float>& tensor, const void**) {
                    total += aligned_bytes(tensor, dtype);
                  });
  return static_cast<int64_t>(total);
}

DeviceWeights::DeviceWeights(int device, const StageWeights& weights, DType dtype)
    : memory_(device, static_cast<size_t>(device_bytes(weights, dtype)), "the stage weights"),
      layers_(weights.layers.size()) {
  CONVEYOR_ASSERT(dtype == DType::kBF16 || dtype == DType::kF16);
  auto* base = memory_.as<char>();
  size_t offset = 0;
  std::vector<uint16_t> staging;
  for_each_tensor(
      weights, layers_, &embedding_, &final_norm_, &lm_head_,
      [&](const std::vector<float>& tensor, const void** slot) {
        if (tensor.empty()) return;
        staging.resize(tensor.size());
        for (size_t i = 0; i < tensor.size(); ++i) {
          staging[i] = dtype == DType::kBF16 ? f32_to_bf16(tensor[i]) : f32_to_f16(tensor[i]);
        }
        void* destination = base + offset;
        CONVEYOR_CUDA_CHECK(cudaMemcpy(destination, staging.data(),
                                       staging.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
        *slot = destination;
        offset += aligned_bytes(tensor, dtype);
      });
  CONVEYOR_ASSERT(offset <= memory_.bytes());
}

}  // namespace conveyor::cuda
