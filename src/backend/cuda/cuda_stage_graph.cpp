// CudaStage's decode-graph path: a decode micro-batch (every chunk one token) replays a CUDA
// graph of the embedding and every layer, captured once per DecodeGraphKey (decode_graphs.hpp).
#include <cuda_runtime_api.h>

#include "backend/cuda/cuda_stage_impl.hpp"
#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

// A graph bakes in every pointer and size it was captured with. For key.rows rows they are all
// fixed: weights, KV caches, the workspace (the index arrays at indices + k * rows, written by
// upload_indices before the launch) and graph_x, the residual stream at a fixed address. Only
// the pool slot `out` changes from call to call, so it is filled by a copy outside the graph.
// The KV rows a replay writes are the eager path's, so commit and rollback need nothing more.
void CudaStage::compute_graph(const DecodeGraphKey& key, const MicroBatch& mb, Activations& in,
                              const CudaActivations& out) {
  CONVEYOR_ASSERT(key.rows == rows_ && key.rows <= ctx_.plan().graph_rows);
  float* x = ctx_.workspace().graph_x;  // [key.rows, hidden] fp32
  const cudaStream_t stream = ctx_.stream();
  if (!spec_.embedding) load_input(mb, in, x);
  graphs_.launch(key, stream, [&] { forward(mb, x, key.max_keys); });
  CONVEYOR_CUDA_CHECK(
      cudaMemcpyAsync(out.data(), x, out.bytes(), cudaMemcpyDeviceToDevice, stream));
}

DecodeGraphStats decode_graph_stats(const StageBackend& stage) {
  const auto* cuda = dynamic_cast<const CudaStage*>(&stage);
  if (cuda == nullptr) {
    fail(ErrorCode::kInvalidArgument,
         "decode graph counters exist only for CUDA stages (from make_cuda_stage), not for {}",
         stage.describe());
  }
  return cuda->graph_stats();
}

}  // namespace conveyor::cuda
