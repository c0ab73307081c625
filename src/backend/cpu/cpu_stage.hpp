// CpuStage: the CPU implementation of StageBackend — one pipeline stage's layers, its KV cache
// slice and its own thread pool. Computes in fp32; weight matrices are fp32 or bf16.
#pragma once

#include <memory>
#include <vector>

#include "backend/cpu/cpu_ops.hpp"
#include "backend/cpu/gemm_small.hpp"
#include "backend/cpu/thread_pool.hpp"
#include "backend/kv_cache.hpp"
#include "backend/stage_backend.hpp"
#include "conveyor/dtype.hpp"
#include "conveyor/model_config.hpp"
#include "model/weights.hpp"

namespace conveyor::cpu {

struct CpuStageOptions {
  int n_threads = 1;        // this stage's thread budget
  int32_t max_seqs = 1;     // KV slots
  int64_t max_context = 0;  // KV positions per slot
  // kF32, or kBF16: the projection matrices, embedding and lm_head are rounded to bf16 once
  // (half the memory and bandwidth), norms and biases stay fp32.
  DType weight_dtype = DType::kF32;
  bool batch_invariant = false;  // DeviceOptions::batch_invariant
};

// A tensor as the stage holds it: fp32 values, or bf16 ones for a matrix under bf16; in place in
// the checkpoint's mapping (TensorSource::stored), in a buffer of its own, or (--no-mmap) in the
// stage's WeightArena. `data.keep_alive` holds whichever it is.
struct CpuTensor {
  StoredTensor data;    // empty: an absent tensor (a bias the model does not have)
  bool bf16 = false;    // data holds bf16 values, else fp32
  bool mapped = false;  // data is the checkpoint's mapping

  WeightView view() const {
    const void* p = data.bytes.data();
    return bf16 ? WeightView(static_cast<const uint16_t*>(p))
                : WeightView(static_cast<const float*>(p));
  }
  const float* values() const {  // norms, biases (never bf16)
    return bf16 ? nullptr : reinterpret_cast<const float*>(data.bytes.data());
  }
  int64_t bytes() const { return static_cast<int64_t>(data.bytes.size()); }
};
using CpuLayer = LayerTensors<CpuTensor>;
using CpuWeights = StageTensors<CpuTensor>;

// Loads a stage's tensors from a checkpoint straight into the form the stage stores (`dtype`:
// kF32 or kBF16), one tensor at a time; with `in_place`, a tensor the file stores in that form
// already is used where it is (TensorSource::stored), not copied.
CpuWeights load_cpu_weights(const TensorSource& tensors, const ModelConfig& config,
                            const StageWeightsSpec& spec, DType dtype, bool in_place = true);

class CpuStage final : public StageBackend {
 public:
  // From fp32 weights (converted to options.weight_dtype here) or already converted ones.
  CpuStage(const ModelConfig& config, StageWeights weights, const CpuStageOptions& options);
  CpuStage(const ModelConfig& config, CpuWeights weights, const CpuStageOptions& options);

  std::string describe() const override;
  void compute(const MicroBatch& mb, const StepContext& ctx, Activations& activations) override;
  void sample(const MicroBatch& mb, const StepContext& ctx, const Activations& activations,
              std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) override;
  void commit(int64_t step, std::span<const int32_t> seqs) override { kv_.commit(step, seqs); }
  void rollback(std::span<const int32_t> seqs) override { kv_.rollback(seqs); }
  void truncate(int32_t seq, int64_t length) override { kv_.truncate(seq, length); }
  int64_t committed(int32_t seq) const override { return kv_.committed(seq); }

 private:
  void run_layer(const CpuLayer& w, int64_t local_layer, const MicroBatch& mb, float* hidden);
  // The lm_head, or the embedding it is tied to on a stage that holds both (one copy).
  WeightView lm_head() const;
  // cpu::linear with this stage's batch-invariance setting (hides the free function here).
  void linear(LinearArgs args, ThreadPool& pool) const {
    args.row_invariant = batch_invariant_;
    cpu::linear(args, pool);
  }

  ModelConfig config_;
  DType weight_dtype_;
  bool batch_invariant_;
  CpuWeights weights_;
  int64_t weight_bytes_ = 0;
  int64_t mapped_bytes_ = 0;     // of weight_bytes_, in the checkpoint's mapping
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
