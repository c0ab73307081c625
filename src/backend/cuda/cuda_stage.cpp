// CudaStage: construction (device, memory and option checks), embedding and decoder layers of one
// pipeline stage on a CUDA device — the CpuStage's ops in the same order, in bf16/fp16 with an
// fp32 residual stream — and the KV commit barrier. The head is in cuda_stage_head.cpp.
#include "backend/cuda/cuda_stage.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_stage_impl.hpp"
#include "core/check.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/kernels.hpp"
#include "model/rope.hpp"

namespace conveyor::cuda {

namespace {

// Rows of one launch: swiglu's grid.y and decode attention's grid.z hold at most 65535.
constexpr int64_t kMaxTokensLimit = 65535;
// Activation buffers a stage starts with: link capacity (2) + 2, see activation_pool.hpp.
constexpr int kActivationSlots = 4;
// Kept free beyond the planned bytes: CUDA context growth, cuBLASLt, allocator rounding.
constexpr double kHeadroomBytes = 256.0 * (1 << 20);
// Pinned staging sets for the per-micro-batch index upload (double-buffered).
constexpr int kStagingSets = 2;

double mib(double bytes) {
  return bytes / (1 << 20);
}
double gib(double bytes) {
  return bytes / (1 << 30);
}

const char* dtype_label(DType dtype) {
  return dtype == DType::kBF16 ? "bf16" : dtype == DType::kF16 ? "f16" : "f32";
}

// Device count, or 0 and why there is none.
int device_count_or_reason(std::string* reason) {
  int count = 0;
  const cudaError_t result = cudaGetDeviceCount(&count);
  if (result != cudaSuccess) {
    cudaGetLastError();  // not sticky, but leave no error behind for later calls
    if (reason) *reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(result);
    return 0;
  }
  if (count == 0 && reason) *reason = "cudaGetDeviceCount returned 0";
  return count;
}

int select_device(int device) {
  set_device(device);
  return device;
}

void* advance(void* base, int64_t elements, DType dtype) {
  return static_cast<char*>(base) + elements * static_cast<int64_t>(dtype_size(dtype));
}
const void* advance(const void* base, int64_t elements, DType dtype) {
  return static_cast<const char*>(base) + elements * static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace

CudaStage::CudaStage(const ModelConfig& config, const UploadWeights& upload,
                     const StageWeightsSpec& spec, const CudaStageOptions& options,
                     const CudaStageSetup& setup)
    : config_(config),
      options_(options),
      spec_(spec),
      n_local_layers_(spec.last_layer - spec.first_layer),
      memory_(setup.memory),
      max_tokens_(setup.memory.max_tokens),
      device_(select_device(options.device)),
      device_name_(setup.device_name),
      ctx_(device_, setup.memory.workspace),
      weights_(upload(ctx_.stream())),
      ledger_(options.max_seqs, options.max_context),
      pool_(device_, setup.memory.max_tokens, config.hidden_size, kActivationSlots),
      graphs_(device_) {
  const std::vector<float> inv_freq = rope_inv_freq(config);
  inv_freq_ = DeviceBuffer(device_, inv_freq.size() * sizeof(float), "RoPE frequencies");
  CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(inv_freq_.get(), inv_freq.data(),
                                      inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice,
                                      ctx_.stream()));
  // The host vector goes out of scope: let the copy finish first.
  ctx_.synchronize();
  for (int64_t l = 0; l < n_local_layers_; ++l) {
    k_cache_.emplace_back(device_, memory_.kv_layer_bytes, "the KV cache (keys)");
    v_cache_.emplace_back(device_, memory_.kv_layer_bytes, "the KV cache (values)");
  }
  for (int i = 0; i < kStagingSets; ++i) {
    staging_.push_back(Staging{
        PinnedBuffer(4 * static_cast<size_t>(max_tokens_) * sizeof(int32_t), "index staging"),
        Event(device_)});
  }
  if (spec_.head) {
    const auto head_rows = static_cast<size_t>(ctx_.plan().head_rows);
    head_params_ = PinnedBuffer(head_rows * sizeof(kernels::SampleRowParams), "sampling params");
    head_tokens_ = PinnedBuffer(head_rows * sizeof(int32_t), "sampled tokens");
    head_logits_ = PinnedBuffer(head_rows * static_cast<size_t>(config.vocab_size) * sizeof(float),
                                "logits rows");
  }
}

std::string CudaStage::describe() const {
  const double workspace = static_cast<double>(ctx_.bytes() + pool_.bytes());
  const int64_t kv_bytes_per_token = memory_.kv_bytes_per_token;
  return fmt::format(
      "cuda:{} {} ({}): weights {:.1f} MiB, KV capacity {} tokens ({} slots x {}) at {:.1f} "
      "KiB/token, workspace {:.1f} MiB, decode graphs {}",
      device_, device_name_, dtype_label(options_.dtype),
      mib(static_cast<double>(weights_.bytes())),
      static_cast<int64_t>(options_.max_seqs) * options_.max_context, options_.max_seqs,
      options_.max_context, static_cast<double>(kv_bytes_per_token) / 1024, mib(workspace),
      ctx_.plan().graph_rows > 0 ? "on" : "off");
}

void CudaStage::compute(const MicroBatch& mb, const StepContext& ctx, Activations& activations) {
  set_device(device_);
  const int64_t n = mb.n_tokens();
  if (n > max_tokens_) {
    fail(ErrorCode::kInvalidArgument,
         "micro-batch {} has {} tokens but the CUDA stage on device {} holds at most {} "
         "(CudaStageOptions::max_tokens_per_micro_batch); prefill long prompts in chunks of at "
         "most {} tokens (EngineOptions::chunk_tokens) or use more micro-batches",
         mb.id, n, device_, max_tokens_, max_tokens_);
  }
  // Reserve every chunk's KV positions first: KV order is checked before any work is done.
  for (const SeqChunk& chunk : mb.chunks)
    ledger_.reserve(chunk.seq, chunk.begin, chunk.end);

  // A failure leaves this call's work in flight: no synchronization here, since the stream may
  // wait on a transfer that a failed peer never completes (NCCL). The pipeline resets the links
  // (aborting such transfers) and then rolls every stage back, synchronizing its stream, before
  // the next step (activation_pool.hpp).
  upload_indices(mb, ctx);
  const cudaStream_t stream = ctx_.stream();
  std::shared_ptr<CudaActivations> out = pool_.acquire(n, stream);
  if (const std::optional<DecodeGraphKey> key =
          decode_graph_key(mb, ctx_.plan().graph_rows, options_.max_context)) {
    compute_graph(*key, mb, activations, *out);
  } else {
    float* x = out->data();  // [n, hidden] fp32: the residual stream of this micro-batch
    if (!spec_.embedding) load_input(mb, activations, x);
    forward(mb, x, 0);
  }
  out->record_ready(stream);
  activations.host.clear();
  activations.device = std::move(out);
}

void CudaStage::upload_indices(const MicroBatch& mb, const StepContext& ctx) {
  const int64_t n = mb.n_tokens();
  Staging& staging = staging_[static_cast<size_t>(next_staging_)];
  next_staging_ = (next_staging_ + 1) % kStagingSets;
  // The copy that last read this set must be done before it is rewritten (the other set's
  // upload may still be queued behind the previous micro-batch's kernels).
  CONVEYOR_CUDA_CHECK(cudaEventSynchronize(staging.uploaded.get()));

  rows_ = n;
  positions_.resize(static_cast<size_t>(n));
  int32_t* ids = staging.indices.as<int32_t>();  // [4, n]: ids, positions, slots, lengths
  int32_t* positions = ids + n;
  int32_t* slots = ids + 2 * n;
  int32_t* lengths = ids + 3 * n;
  int64_t row = 0;
  for (const SeqChunk& chunk : mb.chunks) {
    const std::vector<int32_t>* tokens = nullptr;
    if (spec_.embedding) {
      CONVEYOR_ASSERT(chunk.seq >= 0 && static_cast<size_t>(chunk.seq) < ctx.tokens.size());
      tokens = &ctx.tokens[static_cast<size_t>(chunk.seq)];
      CONVEYOR_ASSERT(chunk.end <= static_cast<int64_t>(tokens->size()));
    }
    for (int64_t p = chunk.begin; p < chunk.end; ++p, ++row) {
      int32_t id = 0;
      if (tokens != nullptr) {
        id = (*tokens)[static_cast<size_t>(p)];
        if (id < 0 || id >= config_.vocab_size) {
          fail(ErrorCode::kInvalidArgument,
               "token id {} of sequence {} at position {} is outside the vocabulary [0, {})", id,
               chunk.seq, p, config_.vocab_size);
        }
      }
      ids[row] = id;
      positions[row] = static_cast<int32_t>(p);
      slots[row] = chunk.seq;
      lengths[row] = static_cast<int32_t>(p + 1);
      positions_[static_cast<size_t>(row)] = p;
    }
  }
  CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(ctx_.workspace().indices, ids,
                                      4 * static_cast<size_t>(n) * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, ctx_.stream()));
  CONVEYOR_CUDA_CHECK(cudaEventRecord(staging.uploaded.get(), ctx_.stream()));
}

void CudaStage::load_input(const MicroBatch& mb, Activations& in, float* x) {
  const int64_t n = rows_, hidden = config_.hidden_size;
  const size_t bytes = static_cast<size_t>(n * hidden) * sizeof(float);
  const cudaStream_t stream = ctx_.stream();
  if (in.device) {
    const auto* source = dynamic_cast<const CudaActivations*>(in.device.get());
    if (source == nullptr) {
      fail(ErrorCode::kCommunication,
           "the CUDA stage on device {} received micro-batch {}'s activations from another "
           "backend; stages of one pipeline must share a backend",
           device_, mb.id);
    }
    if (source->n_tokens() != n || source->hidden() != hidden) {
      fail(ErrorCode::kCommunication,
           "stage received {} x {} activations for micro-batch {} but expected {} tokens x "
           "hidden {}",
           source->n_tokens(), source->hidden(), mb.id, n, hidden);
    }
    source->wait_ready(stream);
    if (source->device() == device_) {
      CONVEYOR_CUDA_CHECK(
          cudaMemcpyAsync(x, source->data(), bytes, cudaMemcpyDeviceToDevice, stream));
    } else {
      CONVEYOR_CUDA_CHECK(
          cudaMemcpyPeerAsync(x, device_, source->data(), source->device(), bytes, stream));
    }
    source->record_consumed(device_, stream);
    in.device.reset();  // frees the producer's buffer; its next writes wait for `consumed`
    return;
  }
  if (static_cast<int64_t>(in.host.size()) != n * hidden) {
    fail(ErrorCode::kCommunication,
         "stage received {} activation values for micro-batch {} but expected {} ({} tokens x "
         "hidden {})",
         in.host.size(), mb.id, n * hidden, n, hidden);
  }
  // From pageable memory the call returns once the source is staged, so `in` may go.
  CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(x, in.host.data(), bytes, cudaMemcpyHostToDevice, stream));
}

void CudaStage::forward(const MicroBatch& mb, float* x, int64_t max_keys) {
  if (spec_.embedding) {
    kernels::launch_embedding({.dtype = options_.dtype,
                               .out_dtype = DType::kF32,
                               .table = weights_.embedding(),
                               .ids = device_ids(),
                               .out = x,
                               .n = rows_,
                               .vocab = config_.vocab_size,
                               .hidden = config_.hidden_size},
                              ctx_.stream());
  }
  for (size_t l = 0; l < weights_.layers().size(); ++l)
    run_layer(l, mb, x, max_keys);
}

void CudaStage::run_layer(size_t layer, const MicroBatch& mb, float* x, int64_t max_keys) {
  const ModelConfig& c = config_;
  const DeviceLayerWeights& w = weights_.layers()[layer];
  const Workspace& ws = ctx_.workspace();
  const cudaStream_t stream = ctx_.stream();
  const DType dt = options_.dtype;
  const int64_t n = rows_;
  const int64_t h = c.hidden_size, q_dim = c.q_dim(), kv_dim = c.kv_dim();
  const int64_t inter = c.intermediate_size;
  Gemm& gemm = ctx_.gemm();

  // Attention block: x += o_proj(attention(rope(q), rope(k), v)).
  kernels::launch_rmsnorm_residual({.dtype = dt,
                                    .residual_dtype = DType::kF32,
                                    .residual = x,
                                    .weight = w.attn_norm,
                                    .out = ws.normed,
                                    .n = n,
                                    .hidden = h,
                                    .eps = c.rms_norm_eps},
                                   stream);
  gemm.run({.dtype = dt,
            .y_dtype = dt,
            .x = ws.normed,
            .w = w.wq,
            .y = ws.q,
            .n = n,
            .in = h,
            .out = q_dim},
           stream);
  gemm.run({.dtype = dt,
            .y_dtype = dt,
            .x = ws.normed,
            .w = w.wk,
            .y = ws.k,
            .n = n,
            .in = h,
            .out = kv_dim},
           stream);
  gemm.run({.dtype = dt,
            .y_dtype = dt,
            .x = ws.normed,
            .w = w.wv,
            .y = ws.v,
            .n = n,
            .in = h,
            .out = kv_dim},
           stream);
  kernels::launch_rope({.dtype = dt,
                        .q = ws.q,
                        .k = ws.k,
                        .v = ws.v,
                        .q_bias = w.bq,
                        .k_bias = w.bk,
                        .v_bias = w.bv,
                        .positions = device_positions(),
                        .inv_freq = inv_freq_.as<float>(),
                        .n = n,
                        .n_heads = c.n_heads,
                        .n_kv_heads = c.n_kv_heads,
                        .head_dim = c.head_dim},
                       stream);
  kernels::launch_kv_append({.dtype = dt,
                             .k_new = ws.k,
                             .v_new = ws.v,
                             .k_cache = k_cache_[layer].get(),
                             .v_cache = v_cache_[layer].get(),
                             .slots = device_slots(),
                             .positions = device_positions(),
                             .n = n,
                             .kv_dim = kv_dim,
                             .seq_stride = kv_seq_stride()},
                            stream);
  attention(layer, mb, max_keys);
  gemm.run({.dtype = dt,
            .y_dtype = DType::kF32,
            .x = ws.attn,
            .w = w.wo,
            .y = x,
            .n = n,
            .in = q_dim,
            .out = h,
            .accumulate = true},
           stream);

  // MLP block: x += down(silu(gate(x)) * up(x)).
  kernels::launch_rmsnorm_residual({.dtype = dt,
                                    .residual_dtype = DType::kF32,
                                    .residual = x,
                                    .weight = w.mlp_norm,
                                    .out = ws.normed,
                                    .n = n,
                                    .hidden = h,
                                    .eps = c.rms_norm_eps},
                                   stream);
  gemm.run({.dtype = dt,
            .y_dtype = dt,
            .x = ws.normed,
            .w = w.w_gate,
            .y = ws.gate,
            .n = n,
            .in = h,
            .out = inter},
           stream);
  gemm.run({.dtype = dt,
            .y_dtype = dt,
            .x = ws.normed,
            .w = w.w_up,
            .y = ws.up,
            .n = n,
            .in = h,
            .out = inter},
           stream);
  kernels::launch_swiglu(
      {.dtype = dt, .gate = ws.gate, .up = ws.up, .out = ws.gate, .n = n, .inter = inter}, stream);
  gemm.run({.dtype = dt,
            .y_dtype = DType::kF32,
            .x = ws.gate,
            .w = w.w_down,
            .y = x,
            .n = n,
            .in = inter,
            .out = h,
            .accumulate = true},
           stream);
}

// Chunks of several tokens go to the prefill kernel (causal within the chunk, over the cached
// prefix); runs of consecutive single-token chunks (decode) go to the split-K decode kernel
// together, each row with its own slot and length.
void CudaStage::attention(size_t layer, const MicroBatch& mb, int64_t max_keys) {
  const ModelConfig& c = config_;
  const Workspace& ws = ctx_.workspace();
  const DType dt = options_.dtype;
  const int64_t q_dim = c.q_dim();
  int64_t row = 0;
  int64_t run_begin = -1;  // first row of the pending run of single-token chunks
  for (const SeqChunk& chunk : mb.chunks) {
    const int64_t len = chunk.n_tokens();
    if (len == 1) {
      if (run_begin < 0) run_begin = row;
    } else {
      if (run_begin >= 0) decode_attention(layer, run_begin, row, max_keys);
      run_begin = -1;
      const int64_t cache_offset = static_cast<int64_t>(chunk.seq) * kv_seq_stride();
      kernels::launch_prefill_attention({.dtype = dt,
                                         .q = advance(ws.q, row * q_dim, dt),
                                         .k = advance(k_cache_[layer].get(), cache_offset, dt),
                                         .v = advance(v_cache_[layer].get(), cache_offset, dt),
                                         .out = advance(ws.attn, row * q_dim, dt),
                                         .n = len,
                                         .pos0 = chunk.begin,
                                         .n_heads = c.n_heads,
                                         .n_kv_heads = c.n_kv_heads,
                                         .head_dim = c.head_dim},
                                        ctx_.stream());
    }
    row += len;
  }
  if (run_begin >= 0) decode_attention(layer, run_begin, row, max_keys);
}

// A graph passes its keys bucket as max_keys: the launch must not depend on this step's lengths.
void CudaStage::decode_attention(size_t layer, int64_t row_begin, int64_t row_end,
                                 int64_t max_keys) {
  const ModelConfig& c = config_;
  const Workspace& ws = ctx_.workspace();
  const WorkspacePlan& plan = ctx_.plan();
  const DType dt = options_.dtype;
  for (int64_t begin = row_begin; begin < row_end; begin += plan.decode_rows) {
    const int64_t end = std::min(row_end, begin + plan.decode_rows);
    int64_t keys = max_keys;
    if (keys == 0) {
      keys = 1;
      for (int64_t r = begin; r < end; ++r)
        keys = std::max(keys, positions_[static_cast<size_t>(r)] + 1);
    }
    const kernels::DecodeAttentionArgs args{.dtype = dt,
                                            .q = advance(ws.q, begin * c.q_dim(), dt),
                                            .k_cache = k_cache_[layer].get(),
                                            .v_cache = v_cache_[layer].get(),
                                            .slots = device_slots() + begin,
                                            .lengths = device_lengths() + begin,
                                            .out = advance(ws.attn, begin * c.q_dim(), dt),
                                            .workspace = ws.decode,
                                            .n_seqs = end - begin,
                                            .n_heads = c.n_heads,
                                            .n_kv_heads = c.n_kv_heads,
                                            .head_dim = c.head_dim,
                                            .max_keys = keys,
                                            .seq_stride = kv_seq_stride()};
    CONVEYOR_ASSERT(kernels::decode_attention_workspace_bytes(args) <= plan.decode);
    kernels::launch_decode_attention(args, ctx_.stream());
  }
}

void CudaStage::commit(int64_t step, std::span<const int32_t> seqs) {
  set_device(device_);
  // A committed step is complete on the device, not merely enqueued.
  ctx_.synchronize();
  ledger_.commit(step, seqs);
}

void CudaStage::rollback(std::span<const int32_t> seqs) {
  // Never throws (it runs on the failure path): leave no work of the failed step in flight.
  set_device(device_);
  ctx_.synchronize_noexcept();
  ledger_.rollback(seqs);
}

int device_count() {
  return device_count_or_reason(nullptr);
}

std::string pci_bus_id(int device) {
  char id[32] = {};
  const cudaError_t result = cudaDeviceGetPCIBusId(id, sizeof id, device);
  if (result != cudaSuccess) {
    cudaGetLastError();
    fail(ErrorCode::kInvalidArgument, "CUDA device {} has no PCI bus id: {} ({} devices visible)",
         device, cudaGetErrorString(result), device_count());
  }
  return id;
}

void CudaStageOptions::validate() const {
  if (device < 0) {
    fail(ErrorCode::kInvalidArgument, "CUDA device id is {} but must be >= 0", device);
  }
  if (dtype != DType::kBF16 && dtype != DType::kF16) {
    fail(ErrorCode::kInvalidArgument,
         "device dtype {} is not supported by the CUDA backend: weights, KV cache and "
         "activations are 16-bit there (with fp32 accumulation); use bf16 or f16 "
         "(EngineOptions::device_dtype), or the cpu backend for fp32",
         dtype_name(dtype));
  }
  if (max_seqs < 1) {
    fail(ErrorCode::kInvalidArgument,
         "max_seqs is {} but must be at least 1 (EngineOptions::max_batch)", max_seqs);
  }
  if (max_context < 1 || max_context > INT32_MAX) {
    fail(ErrorCode::kInvalidArgument,
         "max_context is {} but the CUDA stage needs 1 <= max_context <= {} (positions are "
         "int32 on the device)",
         max_context, INT32_MAX);
  }
  if (max_tokens_per_micro_batch < 1 || max_tokens_per_micro_batch > kMaxTokensLimit) {
    fail(ErrorCode::kInvalidArgument,
         "max_tokens_per_micro_batch is {} but must be in [1, {}]; prefill longer prompts in "
         "chunks (EngineOptions::chunk_tokens)",
         max_tokens_per_micro_batch, kMaxTokensLimit);
  }
}

StageMemoryPlan plan_stage_memory(const ModelConfig& config, const CudaStageOptions& options,
                                  const StageWeightsSpec& spec, size_t weight_bytes) {
  StageMemoryPlan m;
  m.max_tokens = options.effective_max_tokens();
  const int64_t graph_rows =
      options.cuda_graphs ? decode_graph_max_rows(m.max_tokens, options.max_seqs) : 0;
  m.workspace = plan_workspace(config, options.dtype, m.max_tokens, options.max_seqs,
                               options.max_context, spec.head, graph_rows);
  m.weight_bytes = weight_bytes;
  m.n_layers = spec.last_layer - spec.first_layer;
  const auto element = static_cast<size_t>(dtype_size(options.dtype));
  m.kv_layer_bytes = static_cast<size_t>(options.max_seqs) *
                     static_cast<size_t>(options.max_context) *
                     static_cast<size_t>(config.kv_dim()) * element;
  m.kv_bytes_per_token = 2 * m.n_layers * config.kv_dim() * static_cast<int64_t>(element);
  m.pool_bytes = ActivationPool::bytes_for(m.max_tokens, config.hidden_size, kActivationSlots);
  m.gemm_bytes = Gemm::kDefaultWorkspaceBytes;
  return m;
}

int64_t CudaStageOptions::effective_max_tokens() const {
  return std::min<int64_t>(max_tokens_per_micro_batch,
                           static_cast<int64_t>(max_seqs) * max_context);
}

namespace {

// make_cuda_stage for weights from a checkpoint (StageWeights) or drawn (StageDraws).
template <typename Source>
std::unique_ptr<StageBackend> make_stage(const ModelConfig& config, const Source& weights,
                                         const CudaStageOptions& options) {
  options.validate();
  if (config.head_dim != 64 && config.head_dim != 128) {
    fail(ErrorCode::kInvalidArgument,
         "head_dim is {} but the CUDA attention kernels support 64 and 128; run this model on "
         "the cpu backend (or add a kernel instantiation for head_dim {})",
         config.head_dim, config.head_dim);
  }
  std::string reason;
  const int count = device_count_or_reason(&reason);
  if (count == 0) {
    fail(ErrorCode::kDevice,
         "no CUDA device is visible ({}); check the driver and CUDA_VISIBLE_DEVICES, or use the "
         "cpu backend",
         reason);
  }
  if (options.device >= count) {
    fail(ErrorCode::kInvalidArgument,
         "CUDA device {} does not exist: {} device{} visible (ids 0..{}); pick an existing id, "
         "or let stages share a device (--devices 0,0,...)",
         options.device, count, count == 1 ? " is" : "s are", count - 1);
  }
  const int device = options.device;
  set_device(device);
  cudaDeviceProp properties{};
  CONVEYOR_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  if (options.dtype == DType::kBF16 && properties.major < 8) {
    fail(ErrorCode::kDevice,
         "CUDA device {} ({}) has compute capability {}.{} but bf16 needs 8.0 or newer; use f16 "
         "(EngineOptions::device_dtype = kF16)",
         device, properties.name, properties.major, properties.minor);
  }
  const size_t attention_smem = kernels::prefill_attention_shared_bytes(config.head_dim);
  if (attention_smem > properties.sharedMemPerBlockOptin) {
    fail(ErrorCode::kDevice,
         "CUDA device {} ({}) offers {} KiB of shared memory per block but prefill attention at "
         "head_dim {} needs {} KiB; run this model on a device with more (A100, H100, H200) or "
         "on the cpu backend",
         device, properties.name, properties.sharedMemPerBlockOptin / 1024, config.head_dim,
         attention_smem / 1024);
  }

  // Memory: everything the stage allocates, checked before the first allocation.
  const StageMemoryPlan memory =
      plan_stage_memory(config, options, weights.spec,
                        static_cast<size_t>(DeviceWeights::device_bytes(weights, options.dtype)));
  const auto needed = static_cast<double>(memory.total());
  size_t free_bytes = 0, total_bytes = 0;
  CONVEYOR_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (needed + kHeadroomBytes > static_cast<double>(free_bytes)) {
    fail(ErrorCode::kOutOfMemory,
         "the stage with layers [{}, {}) needs {:.2f} GiB on CUDA device {} ({}): weights {:.2f} "
         "GiB + KV cache {:.2f} GiB ({} slots x {} positions) + workspace {:.2f} GiB, plus {:.2f} "
         "GiB headroom, but only {:.2f} GiB of {:.2f} GiB is free; put fewer layers on this stage "
         "(more stages or --partition counts), lower --max-context or --max-batch, or use "
         "another device",
         weights.spec.first_layer, weights.spec.last_layer, gib(needed), device, properties.name,
         gib(static_cast<double>(memory.weight_bytes)), gib(static_cast<double>(memory.kv_bytes())),
         options.max_seqs, options.max_context, gib(static_cast<double>(memory.scratch_bytes())),
         gib(kHeadroomBytes), gib(static_cast<double>(free_bytes)),
         gib(static_cast<double>(total_bytes)));
  }
  const UploadWeights upload = [&](cudaStream_t stream) {
    return DeviceWeights(device, weights, options.dtype, stream);
  };
  return std::make_unique<CudaStage>(
      config, upload, weights.spec, options,
      CudaStageSetup{.memory = memory, .device_name = properties.name});
}

}  // namespace

std::unique_ptr<StageBackend> make_cuda_stage(const ModelConfig& config, StageWeights weights,
                                              const CudaStageOptions& options) {
  return make_stage(config, weights, options);
}

std::unique_ptr<StageBackend> make_cuda_stage(const ModelConfig& config, const StageDraws& draws,
                                              const CudaStageOptions& options) {
  return make_stage(config, draws, options);
}

}  // namespace conveyor::cuda
