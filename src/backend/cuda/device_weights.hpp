// DeviceWeights: one stage's weights on its CUDA device in bf16/fp16, in a single allocation —
// converted from the fp32 host copy and uploaded once, or drawn on the device for a
// random-weights model.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/cuda/device_context.hpp"
#include "conveyor/dtype.hpp"
#include "model/weights.hpp"

namespace conveyor::cuda {

// Device pointers of one decoder layer, same shapes and orientation as LayerWeights (dtype);
// null for tensors the model does not have (biases without attention_bias).
using DeviceLayerWeights = LayerTensors<const void*>;

// Immutable after construction (movable: the pointers stay valid). The host StageWeights can be
// dropped once this exists.
class DeviceWeights {
 public:
  // Device bytes the weights take at `dtype` (alignment included), for the memory check.
  static int64_t device_bytes(const StageWeights& weights, DType dtype);
  static int64_t device_bytes(const StageDraws& draws, DType dtype);

  // `device` must be current. Converts and copies on `stream` (the stage's), returning once the
  // copies landed; throws kOutOfMemory/kDevice.
  DeviceWeights(int device, const StageWeights& weights, DType dtype, cudaStream_t stream);
  // `device` must be current. Draws every tensor on the device on `stream`; returns once they
  // are drawn.
  DeviceWeights(int device, const StageDraws& draws, DType dtype, cudaStream_t stream);

  const void* embedding() const { return tensors_.embedding; }    // [vocab, hidden] or nullptr
  const void* final_norm() const { return tensors_.final_norm; }  // [hidden] or nullptr
  const void* lm_head() const { return tensors_.lm_head; }        // [vocab, hidden] or nullptr
  const std::vector<DeviceLayerWeights>& layers() const { return tensors_.layers; }
  int64_t bytes() const { return static_cast<int64_t>(memory_.bytes()); }

 private:
  // A tied head on a stage that also embeds has no tensor of its own: it reads the embedding.
  void share_tied_head();

  DeviceBuffer memory_;
  StageTensors<const void*> tensors_;
};

}  // namespace conveyor::cuda
