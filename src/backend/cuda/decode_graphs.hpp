// Decode steps of a CUDA stage as CUDA graphs: which micro-batches may replay a graph and under
// which key (pure host functions), and DecodeGraphCache, the bounded per-stage cache of
// instantiated graphs. No CUDA header: graphs and streams are opaque.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "conveyor/step_plan.hpp"

typedef struct CUstream_st* cudaStream_t;
typedef struct CUgraphExec_st* cudaGraphExec_t;

namespace conveyor::cuda {

// Decode rows one graph holds at most: bigger micro-batches are bandwidth-bound enough that the
// launch overhead a graph saves no longer matters, and each row count is one more graph.
constexpr int64_t kMaxDecodeGraphRows = 256;
// Decode attention's keys per split: a keys bucket below it would launch the same grid anyway.
constexpr int64_t kMinDecodeKeysBucket = 256;

// What a captured decode graph bakes in besides the stage's fixed buffers: the rows of the
// micro-batch (sizes of every launch, offsets of the index arrays) and the decode-attention
// `max_keys` (its grid and split workspace layout).
struct DecodeGraphKey {
  int64_t rows = 0;
  int64_t max_keys = 0;

  bool operator==(const DecodeGraphKey&) const = default;
};

// Rows a stage's decode graphs may hold: min(max_tokens, max_seqs, kMaxDecodeGraphRows) (a
// decode micro-batch has one row per sequence slot). Sizes the graph residual buffer.
int64_t decode_graph_max_rows(int64_t max_tokens, int32_t max_seqs);

// The decode-attention `max_keys` a graph is captured with for keys up to `max_keys`: the
// smallest power of two >= max_keys, at least kMinDecodeKeysBucket, at most max_context (so it
// fits the planned split workspace). The kernel reads each row's real length from the device
// and skips the splits past it, so any bucket >= the real maximum gives the same result.
int64_t decode_keys_bucket(int64_t max_keys, int64_t max_context);

// The graph key of `mb`, or nothing when the micro-batch takes the eager path: a chunk of more
// (or fewer) than one token, no rows, or more than max_rows rows (max_rows 0: graphs off).
std::optional<DecodeGraphKey> decode_graph_key(const MicroBatch& mb, int64_t max_rows,
                                               int64_t max_context);

// Instantiated decode graphs of one stage by key, at most `capacity` (the least recently used is
// destroyed when a new key needs room, so a long run over many batch sizes stays bounded). Not
// thread-safe: used by the stage's worker only.
class DecodeGraphCache {
 public:
  static constexpr size_t kDefaultCapacity = 64;

  // `device` is the stage's device; graphs are captured on and replayed to its stream.
  explicit DecodeGraphCache(int device, size_t capacity = kDefaultCapacity);
  ~DecodeGraphCache();  // never throws; a graph still running is freed when it completes
  DecodeGraphCache(const DecodeGraphCache&) = delete;
  DecodeGraphCache& operator=(const DecodeGraphCache&) = delete;

  // Enqueues the graph of `key` on `stream` (the device current). Without one, first captures
  // what `record` enqueues on `stream` (capture mode thread-local: the work is recorded, not
  // run) and instantiates it. If `record` throws or the capture fails, the capture is ended, the
  // partial graph destroyed, the stream left usable (not capturing) and the error rethrown.
  void launch(const DecodeGraphKey& key, cudaStream_t stream, const std::function<void()>& record);

  int64_t captures() const { return captures_; }  // graphs captured so far
  int64_t replays() const { return replays_; }    // launches of a graph captured earlier
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    DecodeGraphKey key;
    cudaGraphExec_t exec = nullptr;
    uint64_t last_use = 0;
  };
  cudaGraphExec_t capture(cudaStream_t stream, const std::function<void()>& record);
  void destroy(Entry& entry) noexcept;

  int device_;
  size_t capacity_;
  std::vector<Entry> entries_;  // few: searched linearly
  uint64_t clock_ = 0;
  int64_t captures_ = 0;
  int64_t replays_ = 0;
};

}  // namespace conveyor::cuda
