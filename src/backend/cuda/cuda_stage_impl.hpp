// CudaStage's declaration, shared by its sources (cuda_stage.cpp: construction and layers;
// cuda_stage_graph.cpp: decode steps as CUDA graphs; cuda_stage_head.cpp: final norm, lm_head
// and sampling). Internal to src/backend/cuda: the rest of conveyor includes cuda_stage.hpp and
// builds stages with make_cuda_stage().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/activation_pool.hpp"
#include "backend/cuda/cuda_stage.hpp"
#include "backend/cuda/decode_graphs.hpp"
#include "backend/cuda/device_context.hpp"
#include "backend/cuda/device_weights.hpp"
#include "backend/kv_ledger.hpp"

namespace conveyor::cuda {

// Everything a CUDA stage allocates on its device, planned on the host before the first
// allocation: make_cuda_stage checks it against the free memory, and the stage allocates exactly
// it (the one place the KV cache and workspace sizes are computed).
struct StageMemoryPlan {
  int64_t max_tokens = 0;          // rows of one micro-batch
  WorkspacePlan workspace;         // carved out of one allocation by DeviceContext
  size_t weight_bytes = 0;         // DeviceWeights::device_bytes
  int64_t n_layers = 0;            // decoder layers of the stage
  size_t kv_layer_bytes = 0;       // K (or V) of one layer: [max_seqs, max_context, kv_dim] dtype
  int64_t kv_bytes_per_token = 0;  // K + V of one position over the stage's layers
  size_t pool_bytes = 0;           // the activation pool's initial slots
  size_t gemm_bytes = 0;           // the cuBLASLt workspace

  size_t kv_bytes() const { return 2 * static_cast<size_t>(n_layers) * kv_layer_bytes; }
  size_t scratch_bytes() const { return workspace.total() + pool_bytes + gemm_bytes; }
  size_t total() const { return weight_bytes + kv_bytes() + scratch_bytes(); }
};

StageMemoryPlan plan_stage_memory(const ModelConfig& config, const CudaStageOptions& options,
                                  const StageWeightsSpec& spec, size_t weight_bytes);

// What make_cuda_stage decided before construction (after its checks passed).
struct CudaStageSetup {
  StageMemoryPlan memory;
  std::string device_name;
};

// Builds a stage's DeviceWeights on the stage's own stream.
using UploadWeights = std::function<DeviceWeights(cudaStream_t stream)>;

class CudaStage final : public StageBackend {
 public:
  // The device must pass make_cuda_stage's checks. `upload` builds the weights (for `spec`) on
  // the stage's stream once it exists.
  CudaStage(const ModelConfig& config, const UploadWeights& upload, const StageWeightsSpec& spec,
            const CudaStageOptions& options, const CudaStageSetup& setup);

  std::string describe() const override;
  void compute(const MicroBatch& mb, const StepContext& ctx, Activations& activations) override;
  void sample(const MicroBatch& mb, const StepContext& ctx, const Activations& activations,
              std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) override;
  void commit(int64_t step, std::span<const int32_t> seqs) override;
  void rollback(std::span<const int32_t> seqs) override;
  void truncate(int32_t seq, int64_t length) override { ledger_.truncate(seq, length); }
  int64_t committed(int32_t seq) const override { return ledger_.committed(seq); }

  DecodeGraphStats graph_stats() const {
    return {.captures = graphs_.captures(),
            .replays = graphs_.replays(),
            .cached = static_cast<int64_t>(graphs_.size())};
  }

 private:
  // Pinned host copy of one micro-batch's index arrays, reusable once `uploaded` completed.
  struct Staging {
    PinnedBuffer indices;  // [4, max_tokens] int32 (used as [4, n] packed)
    Event uploaded;
  };
  // A row of the micro-batch that needs logits.
  int64_t kv_seq_stride() const { return options_.max_context * config_.kv_dim(); }
  const int32_t* device_ids() const { return ctx_.workspace().indices; }
  const int32_t* device_positions() const { return ctx_.workspace().indices + rows_; }
  const int32_t* device_slots() const { return ctx_.workspace().indices + 2 * rows_; }
  const int32_t* device_lengths() const { return ctx_.workspace().indices + 3 * rows_; }

  void upload_indices(const MicroBatch& mb, const StepContext& ctx);
  // Copies the received activations [rows_, hidden] fp32 into `x` (device).
  void load_input(const MicroBatch& mb, Activations& in, float* x);
  // The embedding (first stage) and every layer on the residual stream `x` [rows_, hidden].
  // `max_keys`: decode attention's bound on the keys of a row; 0 is each launch's exact maximum.
  void forward(const MicroBatch& mb, float* x, int64_t max_keys);
  // The decode-graph path of compute() (cuda_stage_graph.cpp): `out` gets the result.
  void compute_graph(const DecodeGraphKey& key, const MicroBatch& mb, Activations& in,
                     const CudaActivations& out);
  void run_layer(size_t layer, const MicroBatch& mb, float* x, int64_t max_keys);
  void attention(size_t layer, const MicroBatch& mb, int64_t max_keys);
  void decode_attention(size_t layer, int64_t row_begin, int64_t row_end, int64_t max_keys);
  const float* head_input(const MicroBatch& mb, const Activations& in,
                          std::shared_ptr<CudaActivations>& own);
  void head_pass(const HeadRow* rows, int64_t n_rows, const float* x, const StepContext& ctx,
                 std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits);

  ModelConfig config_;
  CudaStageOptions options_;
  StageWeightsSpec spec_;
  int64_t n_local_layers_;
  StageMemoryPlan memory_;
  int64_t max_tokens_;
  int device_;
  std::string device_name_;
  DeviceContext ctx_;
  DeviceWeights weights_;
  DeviceBuffer inv_freq_;              // [head_dim / 2] fp32
  std::vector<DeviceBuffer> k_cache_;  // per local layer: [max_seqs, max_context, n_kv_heads,
                                       // head_dim] dtype (the kernels' cache layout)
  std::vector<DeviceBuffer> v_cache_;  // same layout
  // Committed/pending lengths per slot (the KV commit barrier's rules). Rows past a slot's
  // pending length are never read, so rollback() only resets lengths.
  KvLedger ledger_;
  ActivationPool pool_;
  std::vector<Staging> staging_;  // [kStagingSets]
  int next_staging_ = 0;
  PinnedBuffer head_params_;  // [head_rows] SampleRowParams
  PinnedBuffer head_tokens_;  // [head_rows] int32
  PinnedBuffer head_logits_;  // [head_rows, vocab] fp32
  DecodeGraphCache graphs_;   // replays write ctx_.workspace().graph_x, never a pool slot

  // The micro-batch being computed.
  int64_t rows_ = 0;
  std::vector<int64_t> positions_;  // [rows_]
};

}  // namespace conveyor::cuda
