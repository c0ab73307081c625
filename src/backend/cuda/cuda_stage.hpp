// The CUDA StageBackend: one pipeline stage's layers in bf16/fp16 on one device (fp32 residual
// stream and accumulation), its device KV cache and, on the last stage, the head and sampling.
// Includes no CUDA header, so the engine can include it.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/stage_backend.hpp"
#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"
#include "model/weights.hpp"

namespace conveyor::cuda {

// CUDA devices visible to this process; 0 when there are none or the driver/runtime cannot be
// used (never throws: "no device" is a normal answer on a CPU-only machine).
int device_count();

struct CudaStageOptions {
  int device = 0;
  DType dtype = DType::kBF16;  // weights, KV cache and activations inside a layer: kBF16 or kF16
  int32_t max_seqs = 1;        // KV slots
  int64_t max_context = 0;     // KV positions per slot
  // Rows of the largest micro-batch; sizes the workspace and the activation buffers. The
  // effective value is min(this, max_seqs * max_context). At most 65535.
  int64_t max_tokens_per_micro_batch = 4096;

  // Throws conveyor::Error(kInvalidArgument) naming the field, value, limit and fix. Needs no
  // device.
  void validate() const;
};

// Checks the options, the model's shapes against the kernels (head_dim 64 or 128), the device
// (exists; compute capability 8.0+ for bf16) and its free memory (weights + KV for max_seqs x
// max_context + workspace), then uploads the weights. Errors: kInvalidArgument (options, shapes,
// unknown device id), kDevice (no device, unsuitable device), kOutOfMemory (with what the stage
// needs, what is free and the fix).
//
// Thread safety and streams: the stage is used by its worker thread (compute, sample) and by
// the engine thread between steps (commit, rollback, release); each entry point makes the
// stage's device current first. All work goes to the stage's own stream; compute() returns
// with work in flight (the output handle carries an event), sample() and commit() synchronize.
std::unique_ptr<StageBackend> make_cuda_stage(const ModelConfig& config, StageWeights weights,
                                              const CudaStageOptions& options);

}  // namespace conveyor::cuda
