// CpuStage: embedding, decoder layers (RMSNorm, GQA attention over the KV cache, SwiGLU MLP) and
// the head of one pipeline stage, in fp32.
#include "backend/cpu/cpu_stage.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <string>

#include "backend/cpu/cpu_ops.hpp"
#include "backend/cpu/weight_arena.hpp"
#include "backend/sampler.hpp"
#include "core/check.hpp"
#include "core/dtype_convert.hpp"
#include "model/rope.hpp"

namespace conveyor::cpu {

namespace {

template <typename T>
T* grow(std::vector<T>& buffer, int64_t count) {
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}

void check_weight_dtype(DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    fail(ErrorCode::kInvalidArgument,
         "the cpu backend stores weights as f32 or bf16, not {}; use --dtype f32 or bf16",
         dtype_flag(dtype));
  }
}

// A tensor as the stage stores it: matrices (2-D) in the stage's dtype (rounded to bf16 under
// kBF16, `values` released at once), norms and biases fp32. fp32 values stay in `values` itself
// (no copy) unless an arena is given, which takes a copy of every tensor (huge pages).
CpuTensor keep(std::vector<float>&& values, const std::vector<int64_t>& shape, DType dtype,
               const std::shared_ptr<WeightArena>& arena = nullptr) {
  const bool bf16 = dtype == DType::kBF16 && shape.size() == 2;
  if (!bf16 && arena == nullptr) {
    auto owned = std::make_shared<std::vector<float>>(std::move(values));
    const std::span<const std::byte> bytes = std::as_bytes(std::span(*owned));
    return CpuTensor{.data = {.bytes = bytes, .keep_alive = std::move(owned)}};
  }
  const size_t size = values.size() * (bf16 ? sizeof(uint16_t) : sizeof(float));
  std::shared_ptr<const void> keep_alive = arena;
  std::span<std::byte> bytes;
  if (arena != nullptr) {
    bytes = arena->allocate(size);
  } else {
    auto owned = std::make_shared<std::vector<std::byte>>(size);
    bytes = *owned;
    keep_alive = std::move(owned);
  }
  if (bf16) {
    auto* out = reinterpret_cast<uint16_t*>(bytes.data());
    for (size_t i = 0; i < values.size(); ++i)
      out[i] = f32_to_bf16(values[i]);
  } else if (size != 0) {
    std::memcpy(bytes.data(), values.data(), size);
  }
  std::vector<float>().swap(values);
  return CpuTensor{.data = {.bytes = bytes, .keep_alive = std::move(keep_alive)}, .bf16 = bf16};
}

// The stage's tensors in the form it computes with. A tied lm_head is left empty on a stage
// that also embeds (the embedding serves both).
CpuWeights convert(StageWeights&& w, const ModelConfig& config, DType dtype) {
  check_weight_dtype(dtype);
  const std::vector<int64_t> table{config.vocab_size, config.hidden_size};
  CpuWeights out;
  out.spec = w.spec;
  out.embedding = keep(std::move(w.embedding), table, dtype);
  for (LayerWeights& layer : w.layers) {
    zip_layer_tensors(layer, out.layers.emplace_back(),
                      [&](size_t index, std::vector<float>& from, CpuTensor& to) {
                        to = keep(std::move(from), layer_tensor_shape(config, index), dtype);
                      });
  }
  out.final_norm = keep(std::move(w.final_norm), {config.hidden_size}, dtype);
  // Weights built by hand may still carry the tied copy: drop it.
  const bool shared = config.tie_word_embeddings && w.spec.embedding && w.spec.head;
  if (!shared) out.lm_head = keep(std::move(w.lm_head), table, dtype);
  return out;
}

// Bytes of the stage's tensors (`mapped_only`: of those in the checkpoint's mapping).
int64_t total_bytes(const CpuWeights& w, bool mapped_only = false) {
  int64_t bytes = 0;
  const auto add = [&](const CpuTensor& t) {
    if (!mapped_only || t.mapped) bytes += t.bytes();
  };
  add(w.embedding);
  add(w.final_norm);
  add(w.lm_head);
  for (const CpuLayer& layer : w.layers)
    for_each_layer_tensor(layer, [&](size_t, const CpuTensor& t) { add(t); });
  return bytes;
}

}  // namespace

CpuWeights load_cpu_weights(const TensorSource& tensors, const ModelConfig& config,
                            const StageWeightsSpec& spec, DType dtype, bool in_place) {
  check_weight_dtype(dtype);
  // Copying every weight (--no-mmap): into an arena of huge pages, where decode is 5-10 % faster
  // (docs/benchmarks.md). Otherwise the copies are the few tensors converted (Llama's GGUF
  // queries and keys) or a bf16 stage, and clearing huge pages at load costs more than they give.
  const auto arena = in_place ? nullptr : std::make_shared<WeightArena>(/*huge_pages=*/true);
  CpuWeights weights = build_stage_tensors<CpuTensor>(
      config, spec, [&](std::string_view name, const std::vector<int64_t>& shape) {
        const bool bf16 = dtype == DType::kBF16 && shape.size() == 2;
        if (std::optional<StoredTensor> stored =
                in_place ? tensors.stored(name, shape, bf16 ? DType::kBF16 : DType::kF32)
                         : std::nullopt) {
          return CpuTensor{.data = std::move(*stored), .bf16 = bf16, .mapped = true};
        }
        return keep(tensors.load_f32(name, shape), shape, dtype, arena);
      });
  // A layer rotates adjacent RoPE pairs only when its queries and keys (weights and biases) all
  // came in llama.cpp's row order; where some did and some did not (a quantized bias, say), the
  // ones that did are read again in Hugging Face order.
  constexpr std::array<size_t, 4> kQueryKey = {1, 2, 4, 5};  // wq, wk, bq, bk
  for (size_t l = 0; l < weights.layers.size(); ++l) {
    CpuLayer& layer = weights.layers[l];
    const std::array<CpuTensor*, 4> qk = {&layer.wq, &layer.wk, &layer.bq, &layer.bk};
    bool any = false, all = true;
    for (const CpuTensor* t : qk) {
      if (t->data.bytes.empty()) continue;  // an absent bias
      any = any || t->data.rope_pairs_adjacent;
      all = all && t->data.rope_pairs_adjacent;
    }
    if (!any || all) continue;
    const std::string prefix =
        weights_detail::layer_prefix(spec.first_layer + static_cast<int64_t>(l));
    for (size_t i = 0; i < qk.size(); ++i) {
      if (!qk[i]->data.rope_pairs_adjacent) continue;
      const std::vector<int64_t> shape = layer_tensor_shape(config, kQueryKey[i]);
      *qk[i] =
          keep(tensors.load_f32(prefix + std::string(kLayerTensorSuffixes[kQueryKey[i]]), shape),
               shape, dtype, arena);
    }
  }
  return weights;
}

CpuStage::CpuStage(const ModelConfig& config, StageWeights weights, const CpuStageOptions& options)
    : CpuStage(config, convert(std::move(weights), config, options.weight_dtype), options) {}

CpuStage::CpuStage(const ModelConfig& config, CpuWeights weights, const CpuStageOptions& options)
    : config_(config),
      weight_dtype_(options.weight_dtype),
      batch_invariant_(options.batch_invariant),
      weights_(std::move(weights)),
      weight_bytes_(total_bytes(weights_)),
      mapped_bytes_(total_bytes(weights_, /*mapped_only=*/true)),
      inv_freq_(rope_inv_freq(config)),
      pool_(options.n_threads),
      kv_(KvCacheShape{
          .n_layers = weights_.spec.last_layer - weights_.spec.first_layer,
          .n_kv_heads = config.n_kv_heads,
          .head_dim = config.head_dim,
          .max_seqs = options.max_seqs,
          .max_context = options.max_context,
      }) {
  warm_up(pool_);
}

std::string CpuStage::describe() const {
  const KvCacheShape& kv = kv_.shape();
  return fmt::format(
      "cpu ({} thread{}, {} kernels{}): weights {:.1f} MiB {}{}, KV capacity {} tokens ({} slots "
      "x {}) at {:.1f} KiB/token, allocated on demand",
      pool_.n_threads(), pool_.n_threads() == 1 ? "" : "s", to_string(small_gemm_isa()),
      batch_invariant_ ? ", batch-invariant" : "", static_cast<double>(weight_bytes_) / (1 << 20),
      weight_dtype_ == DType::kBF16 ? "bf16 (norms fp32)" : "fp32",
      mapped_bytes_ == 0 ? std::string()
                         : fmt::format(" ({:.1f} MiB read in place from the checkpoint's mapping)",
                                       static_cast<double>(mapped_bytes_) / (1 << 20)),
      kv.max_seqs * kv.max_context, kv.max_seqs, kv.max_context,
      static_cast<double>(kv.bytes_per_token()) / 1024);
}

WeightView CpuStage::lm_head() const {
  const bool shared = config_.tie_word_embeddings && weights_.spec.embedding;
  return shared ? weights_.embedding.view() : weights_.lm_head.view();
}

void CpuStage::compute(const MicroBatch& mb, const StepContext& ctx, Activations& in_out) {
  if (in_out.device) {
    fail(ErrorCode::kCommunication,
         "the CPU stage received device activations for micro-batch {}; stages of one pipeline "
         "must share a backend",
         mb.id);
  }
  std::vector<float>& activations = in_out.host;
  const int64_t n = mb.n_tokens();
  const int64_t hidden = config_.hidden_size;
  // Reserve every chunk's KV positions first: KV order is checked before any work is done.
  int64_t* positions = grow(positions_, n);
  int64_t row = 0;
  for (const SeqChunk& chunk : mb.chunks) {
    kv_.reserve(chunk.seq, chunk.begin, chunk.end);
    for (int64_t p = chunk.begin; p < chunk.end; ++p)
      positions[row++] = p;
  }

  if (weights_.spec.embedding) {
    activations.resize(static_cast<size_t>(n * hidden));
    std::vector<int32_t> ids(static_cast<size_t>(n));
    row = 0;
    for (const SeqChunk& chunk : mb.chunks) {
      const std::vector<int32_t>& tokens = ctx.tokens[static_cast<size_t>(chunk.seq)];
      CONVEYOR_ASSERT(chunk.end <= static_cast<int64_t>(tokens.size()));
      for (int64_t p = chunk.begin; p < chunk.end; ++p)
        ids[static_cast<size_t>(row++)] = tokens[static_cast<size_t>(p)];
    }
    embedding(weights_.embedding.view(), ids.data(), n, hidden, activations.data(), pool_);
  } else if (static_cast<int64_t>(activations.size()) != n * hidden) {
    fail(ErrorCode::kCommunication,
         "stage received {} activation values for micro-batch {} but expected {} ({} tokens x "
         "hidden {})",
         activations.size(), mb.id, n * hidden, n, hidden);
  }

  for (size_t l = 0; l < weights_.layers.size(); ++l) {
    run_layer(weights_.layers[l], static_cast<int64_t>(l), mb, activations.data());
  }
}

void CpuStage::run_layer(const CpuLayer& w, int64_t local_layer, const MicroBatch& mb,
                         float* hidden) {
  const ModelConfig& c = config_;
  const int64_t n = mb.n_tokens();
  const int64_t h = c.hidden_size, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const int64_t inter = c.intermediate_size;

  // Attention block: hidden += o_proj(attention(rope(q), rope(k), v)).
  float* normed = grow(normed_, n * h);
  rmsnorm(hidden, w.attn_norm.values(), n, h, c.rms_norm_eps, normed, pool_);
  float* q = grow(q_, n * q_dim);
  float* k = grow(k_, n * kv_dim);
  float* v = grow(v_, n * kv_dim);
  auto bias = [](const CpuTensor& b) { return b.values(); };
  linear({.x = normed, .w = w.wq.view(), .bias = bias(w.bq), .y = q, .n = n, .in = h, .out = q_dim},
         pool_);
  linear(
      {.x = normed, .w = w.wk.view(), .bias = bias(w.bk), .y = k, .n = n, .in = h, .out = kv_dim},
      pool_);
  linear(
      {.x = normed, .w = w.wv.view(), .bias = bias(w.bv), .y = v, .n = n, .in = h, .out = kv_dim},
      pool_);
  // Queries and keys in llama.cpp's row order (computed in place from a GGUF) rotate adjacent
  // pairs; the keys go into the cache in that order too, so q.k sums the same products.
  const bool adjacent = w.wq.data.rope_pairs_adjacent;
  rope(q, positions_.data(), n, c.n_heads, c.head_dim, inv_freq_.data(), pool_, adjacent);
  rope(k, positions_.data(), n, c.n_kv_heads, c.head_dim, inv_freq_.data(), pool_, adjacent);

  float* attn = grow(attn_, n * q_dim);
  int64_t row = 0;
  for (const SeqChunk& chunk : mb.chunks) {
    const int64_t len = chunk.end - chunk.begin;
    kv_.store(local_layer, chunk.seq, chunk.begin, len, k + row * kv_dim, v + row * kv_dim);
    attention({.q = q + row * q_dim,
               .k = kv_.keys(local_layer, chunk.seq),
               .v = kv_.values(local_layer, chunk.seq),
               .out = attn + row * q_dim,
               .n = len,
               .pos0 = chunk.begin,
               .n_heads = c.n_heads,
               .n_kv_heads = c.n_kv_heads,
               .head_dim = c.head_dim,
               .kv_head_stride = kv_.head_stride(chunk.seq)},
              pool_);
    row += len;
  }
  linear(
      {.x = attn, .w = w.wo.view(), .y = hidden, .n = n, .in = q_dim, .out = h, .accumulate = true},
      pool_);

  // MLP block: hidden += down(silu(gate(x)) * up(x)).
  rmsnorm(hidden, w.mlp_norm.values(), n, h, c.rms_norm_eps, normed, pool_);
  float* gate = grow(gate_, n * inter);
  float* up = grow(up_, n * inter);
  linear({.x = normed, .w = w.w_gate.view(), .y = gate, .n = n, .in = h, .out = inter}, pool_);
  linear({.x = normed, .w = w.w_up.view(), .y = up, .n = n, .in = h, .out = inter}, pool_);
  swiglu(gate, up, n * inter, gate, pool_);
  linear({.x = gate,
          .w = w.w_down.view(),
          .y = hidden,
          .n = n,
          .in = inter,
          .out = h,
          .accumulate = true},
         pool_);
}

void CpuStage::sample(const MicroBatch& mb, const StepContext& ctx, const Activations& in,
                      std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) {
  const std::vector<float>& activations = in.host;
  CONVEYOR_ASSERT(weights_.spec.head);
  const int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  CONVEYOR_ASSERT(static_cast<int64_t>(activations.size()) == mb.n_tokens() * h);

  const std::vector<HeadRow> rows = head_rows(mb, ctx);
  if (rows.empty()) return;

  const int64_t n_rows = static_cast<int64_t>(rows.size());
  float* normed = grow(normed_, n_rows * h);
  for (int64_t r = 0; r < n_rows; ++r) {
    std::memcpy(normed + r * h, activations.data() + rows[static_cast<size_t>(r)].index * h,
                sizeof(float) * h);
  }
  rmsnorm(normed, weights_.final_norm.values(), n_rows, h, config_.rms_norm_eps, normed, pool_);
  std::vector<float> out(static_cast<size_t>(n_rows * vocab));
  linear({.x = normed, .w = lm_head(), .y = out.data(), .n = n_rows, .in = h, .out = vocab}, pool_);

  for (int64_t r = 0; r < n_rows; ++r) {
    const HeadRow& row = rows[static_cast<size_t>(r)];
    std::span<const float> row_logits(out.data() + r * vocab, static_cast<size_t>(vocab));
    if (row.sample) {
      tokens.push_back(
          {row.seq, row.position,
           sample_token(row_logits, ctx.sampling[static_cast<size_t>(row.seq)], row.position)});
    }
    if (row.capture) {
      logits.push_back(
          {row.seq, row.position, std::vector<float>(row_logits.begin(), row_logits.end())});
    }
  }
}

}  // namespace conveyor::cpu
