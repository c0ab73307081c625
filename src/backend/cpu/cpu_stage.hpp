// CpuStage: the fp32 CPU implementation of StageBackend — one pipeline stage's layers, its KV
// cache slice and its own thread pool.
#pragma once

#include <memory>
#include <vector>

#include "backend/cpu/thread_pool.hpp"
#include "backend/kv_cache.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/model_config.hpp"
#include "model/weights.hpp"

namespace conveyor::cpu {

struct CpuStageOptions {
  int n_threads = 1;        // this stage's thread budget
  int32_t max_seqs = 1;     // KV slots
  int64_t max_context = 0;  // KV positions per slot
};

class CpuStage final : public StageBackend {
 public:
  CpuStage(const ModelConfig& config, StageWeights weights, const CpuStageOptions& options);

  std::string describe() const override;
  void compute(const MicroBatch& mb, const StepContext& ctx, Activations& activations) override;
  void sample(const MicroBatch& mb, const StepContext& ctx, const Activations& activations,
              std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) override;
  void commit(int64_t step, std::span<const int32_t> seqs) override { kv_.commit(step, seqs); }
  void rollback(std::span<const int32_t> seqs) override { kv_.rollback(seqs); }
  void truncate(int32_t seq, int64_t length) override { kv_.truncate(seq, length); }
  int64_t committed(int32_t seq) const override { return kv_.committed(seq); }

 private:
  void run_layer(const LayerWeights& w, int64_t local_layer, const MicroBatch& mb, float* hidden);

  ModelConfig config_;
  StageWeights weights_;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  ThreadPool pool_;
  KvCache kv_;

  // Scratch, grown on demand and reused across micro-batches.
  std::vector<int64_t> positions_;  // [n_tokens]
  std::vector<float> normed_;       // [n_tokens, hidden]
  std::vector<float> q_;            // [n_tokens, n_heads, head_dim]
  std::vector<float> k_;            // [n_tokens, n_kv_heads, head_dim]
  std::vector<float> v_;            // [n_tokens, n_kv_heads, head_dim]
  std::vector<float> attn_;         // [n_tokens, n_heads, head_dim]
  std::vector<float> gate_;         // [n_tokens, intermediate]
  std::vector<float> up_;           // [n_tokens, intermediate]
};

}  // namespace conveyor::cpu
