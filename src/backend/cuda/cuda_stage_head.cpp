// CudaStage's head on the last stage: gather the rows that need logits, final norm, lm_head into
// fp32 logits, argmax or sampling on the device, and the copies back to the host.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "backend/cuda/cuda_stage_impl.hpp"
#include "core/check.hpp"
#include "kernels/cuda_check.hpp"
#include "kernels/kernels.hpp"

namespace conveyor::cuda {

void CudaStage::sample(const MicroBatch& mb, const StepContext& ctx, const Activations& in,
                       std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) {
  CONVEYOR_ASSERT(spec_.head);
  set_device(device_);
  const std::vector<HeadRow> rows = head_rows(mb, ctx);
  if (rows.empty()) return;

  // No synchronization on failure: see CudaStage::compute.
  std::shared_ptr<CudaActivations> own;  // set when the input is not readable in place
  const float* x = head_input(mb, in, own);
  const int64_t n_rows = static_cast<int64_t>(rows.size());
  const int64_t block = ctx_.plan().head_rows;
  for (int64_t begin = 0; begin < n_rows; begin += block) {
    head_pass(rows.data() + begin, std::min(block, n_rows - begin), x, ctx, tokens, logits);
  }
  if (!own) {
    // Read in place: the reads are done (head_pass synchronized); tell the producer.
    static_cast<const CudaActivations&>(*in.device).record_consumed(device_, ctx_.stream());
  }
}

// The micro-batch's rows [n_tokens, hidden] fp32 readable on this device: the handle's buffer
// itself when it lives here, else a copy in `own`.
const float* CudaStage::head_input(const MicroBatch& mb, const Activations& in,
                                   std::shared_ptr<CudaActivations>& own) {
  const int64_t n = mb.n_tokens(), hidden = config_.hidden_size;
  const cudaStream_t stream = ctx_.stream();
  if (in.device) {
    const auto* source = dynamic_cast<const CudaActivations*>(in.device.get());
    if (source == nullptr || source->n_tokens() != n || source->hidden() != hidden) {
      fail(ErrorCode::kCommunication,
           "the CUDA stage on device {} cannot sample micro-batch {}: its activations are not "
           "{} x {} CUDA activations",
           device_, mb.id, n, hidden);
    }
    source->wait_ready(stream);
    if (source->device() == device_) return source->data();
    if (n > max_tokens_) {
      fail(ErrorCode::kInvalidArgument, "micro-batch {} has {} tokens but at most {} fit", mb.id, n,
           max_tokens_);
    }
    own = pool_.acquire(n, stream);
    CONVEYOR_CUDA_CHECK(cudaMemcpyPeerAsync(own->data(), device_, source->data(), source->device(),
                                            own->bytes(), stream));
    source->record_consumed(device_, stream);
    return own->data();
  }
  if (static_cast<int64_t>(in.host.size()) != n * hidden || n > max_tokens_) {
    fail(ErrorCode::kCommunication,
         "the CUDA stage on device {} cannot sample micro-batch {}: {} activation values, "
         "expected {} ({} tokens x hidden {}, at most {} tokens)",
         device_, mb.id, in.host.size(), n * hidden, n, hidden, max_tokens_);
  }
  own = pool_.acquire(n, stream);
  CONVEYOR_CUDA_CHECK(
      cudaMemcpyAsync(own->data(), in.host.data(), own->bytes(), cudaMemcpyHostToDevice, stream));
  return own->data();
}

// Final norm + lm_head + sampling of up to head_rows rows, then one synchronization.
void CudaStage::head_pass(const HeadRow* rows, int64_t n_rows, const float* x,
                          const StepContext& ctx, std::vector<SampledToken>& tokens,
                          std::vector<LogitsRow>& logits) {
  const Workspace& ws = ctx_.workspace();
  const cudaStream_t stream = ctx_.stream();
  const DType dt = options_.dtype;
  const int64_t h = config_.hidden_size, vocab = config_.vocab_size;
  const size_t row_bytes = static_cast<size_t>(h) * sizeof(float);

  // Gather the rows (runs of consecutive rows in one copy) into [n_rows, hidden] fp32.
  for (int64_t i = 0; i < n_rows;) {
    int64_t j = i + 1;
    while (j < n_rows && rows[j].index == rows[j - 1].index + 1)
      ++j;
    CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(ws.head_x + i * h, x + rows[i].index * h,
                                        static_cast<size_t>(j - i) * row_bytes,
                                        cudaMemcpyDeviceToDevice, stream));
    i = j;
  }
  kernels::launch_rmsnorm_residual({.dtype = dt,
                                    .residual_dtype = DType::kF32,
                                    .residual = ws.head_x,
                                    .weight = weights_.final_norm(),
                                    .out = ws.normed,
                                    .n = n_rows,
                                    .hidden = h,
                                    .eps = config_.rms_norm_eps},
                                   stream);
  ctx_.gemm().run({.dtype = dt,
                   .y_dtype = DType::kF32,
                   .x = ws.normed,
                   .w = weights_.lm_head(),
                   .y = ws.logits,
                   .n = n_rows,
                   .in = h,
                   .out = vocab},
                  stream);

  // Rows that only return logits are argmaxed too (cheap); their token is not used.
  auto* params = head_params_.as<kernels::SampleRowParams>();
  bool random = false;
  for (int64_t r = 0; r < n_rows; ++r) {
    params[r] = kernels::SampleRowParams{.position = rows[r].position};
    if (!rows[r].sample) continue;
    CONVEYOR_ASSERT(rows[r].seq >= 0 && static_cast<size_t>(rows[r].seq) < ctx.sampling.size());
    const SamplingParams& s = ctx.sampling[static_cast<size_t>(rows[r].seq)];
    params[r] = {.temperature = s.temperature,
                 .top_p = s.top_p,
                 .top_k = s.top_k,
                 .seed = s.seed,
                 .position = rows[r].position};
    random = random || !s.greedy();
  }
  if (random) {
    CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(ws.params, params,
                                        static_cast<size_t>(n_rows) * sizeof(*params),
                                        cudaMemcpyHostToDevice, stream));
    kernels::launch_sample({.logits = ws.logits,
                            .params = ws.params,
                            .tokens = ws.tokens,
                            .n_rows = n_rows,
                            .vocab = vocab},
                           stream);
  } else {
    kernels::launch_argmax(
        {.logits = ws.logits, .tokens = ws.tokens, .n_rows = n_rows, .vocab = vocab}, stream);
  }
  auto* host_tokens = head_tokens_.as<int32_t>();
  auto* host_logits = head_logits_.as<float>();
  CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(host_tokens, ws.tokens,
                                      static_cast<size_t>(n_rows) * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, stream));
  const bool capture =
      std::any_of(rows, rows + n_rows, [](const HeadRow& row) { return row.capture; });
  if (capture) {
    CONVEYOR_CUDA_CHECK(cudaMemcpyAsync(host_logits, ws.logits,
                                        static_cast<size_t>(n_rows * vocab) * sizeof(float),
                                        cudaMemcpyDeviceToHost, stream));
  }
  ctx_.synchronize();

  for (int64_t r = 0; r < n_rows; ++r) {
    const HeadRow& row = rows[r];
    if (row.sample) {
      const int32_t token = host_tokens[r];
      if (token < 0 || token >= vocab) {
        fail(ErrorCode::kInternal,
             "every one of the {} logits of sequence {} at position {} is NaN (sampled id {}); "
             "the model produced no number",
             vocab, row.seq, row.position, token);
      }
      tokens.push_back({row.seq, row.position, token});
    }
    if (row.capture) {
      const float* values = host_logits + r * vocab;
      logits.push_back({row.seq, row.position, std::vector<float>(values, values + vocab)});
    }
  }
}

}  // namespace conveyor::cuda
