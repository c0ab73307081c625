// DeviceContext: what one CUDA pipeline stage owns on its device — a stream, a cuBLASLt Gemm and
// a workspace planned on the host and allocated once. No CUDA header: streams are opaque.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "backend/cuda/cuda_raii.hpp"
#include "backend/cuda/gemm.hpp"
#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"
#include "kernels/kernels.hpp"

namespace conveyor::cuda {

// Byte sizes of a stage's scratch buffers, computed on the host for the largest micro-batch
// (plan/run split): the workspace is allocated once and every launch writes into it.
struct WorkspacePlan {
  int64_t max_tokens = 0;   // rows of one micro-batch
  int64_t decode_rows = 0;  // sequences of one decode-attention launch
  int64_t head_rows = 0;    // rows the head (final norm + lm_head) projects at once; 0: no head
  int64_t max_context = 0;  // keys one decode-attention row may attend
  int64_t graph_rows = 0;   // rows a decode graph holds (decode_graphs.hpp); 0: graphs off

  size_t normed = 0;   // [max_tokens, hidden] dtype (also the head's normed rows)
  size_t q = 0;        // [max_tokens, q_dim] dtype
  size_t k = 0;        // [max_tokens, kv_dim] dtype
  size_t v = 0;        // [max_tokens, kv_dim] dtype
  size_t attn = 0;     // [max_tokens, q_dim] dtype
  size_t gate = 0;     // [max_tokens, intermediate] dtype (swiglu output in place)
  size_t up = 0;       // [max_tokens, intermediate] dtype
  size_t indices = 0;  // [4, max_tokens] int32: token ids, positions, slots, lengths
  size_t decode = 0;   // decode attention split partials for decode_rows x max_context
  size_t head_x = 0;   // [head_rows, hidden] fp32: residual rows gathered for the head
  size_t logits = 0;   // [head_rows, vocab] fp32
  size_t params = 0;   // [head_rows] kernels::SampleRowParams
  size_t tokens = 0;   // [head_rows] int32
  // [graph_rows, hidden] fp32: the residual stream of decode graphs, at a fixed address
  // (a graph bakes in its pointers; the activation pool hands out a different slot each time).
  size_t graph_x = 0;

  // Sum of the buffers, each rounded up to 256 bytes (the layout of carve()).
  size_t total() const;
  // The buffers' addresses in an allocation of total() bytes at `base`: the one place the
  // layout is written. Absent buffers (0 bytes) get null pointers.
  struct Workspace carve(void* base) const;
};

// The rows a head pass takes at once: enough for one sampled row per sequence slot, at least 64
// (so all_logits prefill goes in few passes), at most the micro-batch. `graph_rows` (0: none)
// sizes the decode graphs' residual buffer.
WorkspacePlan plan_workspace(const ModelConfig& config, DType dtype, int64_t max_tokens,
                             int32_t max_seqs, int64_t max_context, bool with_head,
                             int64_t graph_rows);

// Device pointers into the one workspace allocation, laid out by WorkspacePlan::carve.
struct Workspace {
  void* normed = nullptr;
  void* q = nullptr;
  void* k = nullptr;
  void* v = nullptr;
  void* attn = nullptr;
  void* gate = nullptr;
  void* up = nullptr;
  int32_t* indices = nullptr;
  void* decode = nullptr;
  float* head_x = nullptr;
  float* logits = nullptr;
  kernels::SampleRowParams* params = nullptr;
  int32_t* tokens = nullptr;
  float* graph_x = nullptr;
};

// One stage's device context. Not thread-safe: used by the stage's worker (commit/rollback come
// from the engine's thread, between steps). Every launch of the stage goes to stream(); the
// stream never synchronizes with other stages' streams except through events.
class DeviceContext {
 public:
  // `device` must be current (set_device). Creates a non-blocking stream, the Gemm (its
  // cuBLASLt handle and workspace) and allocates the workspace of `plan`.
  DeviceContext(int device, const WorkspacePlan& plan);
  ~DeviceContext();  // never throws; waits for the stream's work, then frees
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_.get(); }
  Gemm& gemm() { return *gemm_; }
  const WorkspacePlan& plan() const { return plan_; }
  const Workspace& workspace() const { return workspace_; }
  // Device bytes held: workspace + Gemm workspace.
  size_t bytes() const;

  // Waits until everything enqueued on the stream finished; throws kDevice on an error.
  void synchronize() const;
  // Same, for failure paths: logs instead of throwing.
  void synchronize_noexcept() const noexcept;

 private:
  int device_;
  WorkspacePlan plan_;
  Stream stream_;
  std::unique_ptr<Gemm> gemm_;
  DeviceBuffer memory_;
  Workspace workspace_;
};

}  // namespace conveyor::cuda
