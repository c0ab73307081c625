// Decode-graph keys (pure host logic) and DecodeGraphCache: capture, instantiate, replay and
// least-recently-used eviction of a stage's decode graphs.
#include "backend/cuda/decode_graphs.hpp"

#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

int64_t decode_graph_max_rows(int64_t max_tokens, int32_t max_seqs) {
  return std::max<int64_t>(
      0, std::min<int64_t>({max_tokens, static_cast<int64_t>(max_seqs), kMaxDecodeGraphRows}));
}

int64_t decode_keys_bucket(int64_t max_keys, int64_t max_context) {
  int64_t bucket = kMinDecodeKeysBucket;
  while (bucket < max_keys)
    bucket *= 2;
  return std::min(bucket, max_context);
}

std::optional<DecodeGraphKey> decode_graph_key(const MicroBatch& mb, int64_t max_rows,
                                               int64_t max_context) {
  const auto rows = static_cast<int64_t>(mb.chunks.size());
  if (rows == 0 || rows > max_rows) return std::nullopt;
  int64_t max_keys = 1;
  for (const SeqChunk& chunk : mb.chunks) {
    if (chunk.n_tokens() != 1) return std::nullopt;
    max_keys = std::max(max_keys, chunk.end);  // the row at position end - 1 attends end keys
  }
  // Past the KV capacity the stage refuses the micro-batch before any launch; no key for it.
  if (max_keys > max_context) return std::nullopt;
  return DecodeGraphKey{.rows = rows, .max_keys = decode_keys_bucket(max_keys, max_context)};
}

DecodeGraphCache::DecodeGraphCache(int device, size_t capacity)
    : device_(device), capacity_(std::max<size_t>(capacity, 1)) {
  // Inserting never reallocates, so a graph just instantiated cannot leak on a bad_alloc.
  entries_.reserve(capacity_);
}

DecodeGraphCache::~DecodeGraphCache() {
  for (Entry& entry : entries_)
    destroy(entry);
}

void DecodeGraphCache::destroy(Entry& entry) noexcept {
  if (entry.exec == nullptr) return;
  cudaSetDevice(device_);
  // A launch still in flight is not cut short: CUDA frees the graph when it completes.
  const cudaError_t result = cudaGraphExecDestroy(entry.exec);
  if (result != cudaSuccess) {
    spdlog::warn("cudaGraphExecDestroy on CUDA device {} failed: {}", device_,
                 cudaGetErrorString(result));
  }
  entry.exec = nullptr;
}

void DecodeGraphCache::launch(const DecodeGraphKey& key, cudaStream_t stream,
                              const std::function<void()>& record) {
  ++clock_;
  const auto found = std::find_if(entries_.begin(), entries_.end(),
                                  [&](const Entry& entry) { return entry.key == key; });
  if (found != entries_.end()) {
    found->last_use = clock_;
    CONVEYOR_CUDA_CHECK(cudaGraphLaunch(found->exec, stream));
    ++replays_;
    return;
  }
  const cudaGraphExec_t exec = capture(stream, record);
  if (entries_.size() >= capacity_) {
    const auto oldest =
        std::min_element(entries_.begin(), entries_.end(),
                         [](const Entry& a, const Entry& b) { return a.last_use < b.last_use; });
    destroy(*oldest);
    entries_.erase(oldest);
  }
  entries_.push_back(Entry{.key = key, .exec = exec, .last_use = clock_});
  ++captures_;
  CONVEYOR_CUDA_CHECK(cudaGraphLaunch(exec, stream));
}

cudaGraphExec_t DecodeGraphCache::capture(cudaStream_t stream,
                                          const std::function<void()>& record) {
  // Thread-local: other stages' threads may allocate or synchronize meanwhile without
  // invalidating this capture; a forbidden call on this thread fails the capture instead.
  CONVEYOR_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    record();
  } catch (...) {
    // End the capture so the stream takes work again; what was recorded is dropped.
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);
    if (partial != nullptr) cudaGraphDestroy(partial);
    cudaGetLastError();  // an invalidated capture leaves its error behind; the throw reports
    throw;
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  if (ended != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    cudaGetLastError();
    kernels::check_result(ended, "cudaStreamEndCapture", __FILE__, __LINE__);
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  // The executable graph is independent of the captured one.
  cudaGraphDestroy(graph);
  kernels::check_result(instantiated, "cudaGraphInstantiate", __FILE__, __LINE__);
  return exec;
}

}  // namespace conveyor::cuda
