// DeviceWeights: one stage's weights on its CUDA device in bf16/fp16, converted from the fp32
// host copy on the host and uploaded once into a single allocation.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/device_context.hpp"
#include "conveyor/dtype.hpp"
#include "model/weights.hpp"

namespace conveyor::cuda {

// Device pointers of one decoder layer, same shapes and orientation as LayerWeights (dtype).
struct DeviceLayerWeights {
  const void* attn_norm = nullptr;  // [hidden]
  const void* wq = nullptr;         // [n_heads * head_dim, hidden]
  const void* wk = nullptr;         // [n_kv_heads * head_dim, hidden]
  const void* wv = nullptr;         // [n_kv_heads * head_dim, hidden]
  const void* bq = nullptr;         // [n_heads * head_dim] or nullptr
  const void* bk = nullptr;         // [n_kv_heads * head_dim] or nullptr
  const void* bv = nullptr;         // [n_kv_heads * head_dim] or nullptr
  const void* wo = nullptr;         // [hidden, n_heads * head_dim]
  const void* mlp_norm = nullptr;   // [hidden]
  const void* w_gate = nullptr;     // [intermediate, hidden]
  const void* w_up = nullptr;       // [intermediate, hidden]
  const void* w_down = nullptr;     // [hidden, intermediate]
};

// Immutable after construction. The host StageWeights can be dropped once this exists.
class DeviceWeights {
 public:
  // Device bytes the weights take at `dtype` (alignment included), for the memory check.
  static int64_t device_bytes(const StageWeights& weights, DType dtype);

  // `device` must be current. Converts and copies synchronously; throws kOutOfMemory/kDevice.
  DeviceWeights(int device, const StageWeights& weights, DType dtype);

  const void* embedding() const { return embedding_; }    // [vocab, hidden] or nullptr
  const void* final_norm() const { return final_norm_; }  // [hidden] or nullptr
  const void* lm_head() const { return lm_head_; }        // [vocab, hidden] or nullptr
  const std::vector<DeviceLayerWeights>& layers() const { return layers_; }
  int64_t bytes() const { return static_cast<int64_t>(memory_.bytes()); }

 private:
  DeviceBuffer memory_;
  const void* embedding_ = nullptr;
  const void* final_norm_ = nullptr;
  const void* lm_head_ = nullptr;
  std::vector<DeviceLayerWeights> layers_;
};

}  // namespace conveyor::cuda
