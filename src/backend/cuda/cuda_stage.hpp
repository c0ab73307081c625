// The CUDA StageBackend: one pipeline stage's layers in bf16/fp16 on one device (fp32 residual
// stream and accumulation), its device KV cache and, on the last stage, the head and sampling.
// Includes no CUDA header, so the engine can include it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backend/stage_backend.hpp"
#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"
#include "model/weights.hpp"

namespace conveyor::cuda {

// CUDA devices visible to this process; 0 when there are none or the driver/runtime cannot be
// used (never throws: "no device" is a normal answer on a CPU-only machine).
int device_count();
// The PCI bus id of `device` ("0000:3b:00.0"): which physical GPU a device number names, whatever
// CUDA_VISIBLE_DEVICES renumbered. Throws kInvalidArgument for a device that does not exist.
std::string pci_bus_id(int device);

struct CudaStageOptions {
  int device = 0;
  DType dtype = DType::kBF16;  // weights, KV cache and activations inside a layer: kBF16 or kF16
  int32_t max_seqs = 1;        // KV slots
  int64_t max_context = 0;     // KV positions per slot
  // Rows of the largest micro-batch; sizes the workspace and the activation buffers. The
  // effective value is min(this, max_seqs * max_context). At most 65535.
  int64_t max_tokens_per_micro_batch = 4096;
  // Decode micro-batches (every chunk one token, at most 256 rows) are captured
  // once per (rows, context bucket) in a CUDA graph and replayed (decode_graphs.hpp); prefill
  // and mixed micro-batches always launch kernel by kernel. Off: every kernel is launched.
  bool cuda_graphs = true;

  // Throws conveyor::Error(kInvalidArgument) naming the field, value, limit and fix. Needs no
  // device.
  void validate() const;
  // Rows the stage (and any link that feeds it) takes at most: min(max_tokens_per_micro_batch,
  // max_seqs * max_context).
  int64_t effective_max_tokens() const;
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
// The same for a random-weights stage: the values are drawn on the device (no host copy).
std::unique_ptr<StageBackend> make_cuda_stage(const ModelConfig& config, const StageDraws& draws,
                                              const CudaStageOptions& options);

// A CUDA stage's decode-graph counters, for tests and benchmarks.
struct DecodeGraphStats {
  int64_t captures = 0;  // graphs captured (one per new (rows, context bucket) key)
  int64_t replays = 0;   // launches of a graph captured by an earlier micro-batch
  int64_t cached = 0;    // graphs held now (bounded; least recently used evicted)
};
// The counters of `stage`, which must come from make_cuda_stage (else kInvalidArgument). Read
// from the thread that drives the stage, or between steps.
DecodeGraphStats decode_graph_stats(const StageBackend& stage);

}  // namespace conveyor::cuda
