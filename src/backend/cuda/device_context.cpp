// DeviceContext (stream, Gemm, workspace) and the workspace plan.
#include "backend/cuda/device_context.hpp"

#include <cuda_runtime_api.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "core/check.hpp"
#include "kernels/cuda_check.hpp"

namespace conveyor::cuda {

namespace {

constexpr size_t kAlignment = 256;

size_t round_up(size_t bytes) {
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

}  // namespace

// ---- WorkspacePlan ---------------------------------------------------------------------------

namespace {

// Lays the plan's buffers out in order from `base` (nullptr: only measures) and returns the end.
size_t lay_out(const WorkspacePlan& plan, char* base, Workspace* out) {
  size_t offset = 0;
  auto carve = [&](size_t bytes) -> void* {
    if (bytes == 0) return nullptr;
    void* p = base == nullptr ? nullptr : base + offset;
    offset += round_up(bytes);
    return p;
  };
  Workspace w;
  w.normed = carve(plan.normed);
  w.q = carve(plan.q);
  w.k = carve(plan.k);
  w.v = carve(plan.v);
  w.attn = carve(plan.attn);
  w.gate = carve(plan.gate);
  w.up = carve(plan.up);
  w.indices = static_cast<int32_t*>(carve(plan.indices));
  w.decode = carve(plan.decode);
  w.head_x = static_cast<float*>(carve(plan.head_x));
  w.logits = static_cast<float*>(carve(plan.logits));
  w.params = static_cast<kernels::SampleRowParams*>(carve(plan.params));
  w.tokens = static_cast<int32_t*>(carve(plan.tokens));
  w.graph_x = static_cast<float*>(carve(plan.graph_x));
  if (out != nullptr) *out = w;
  return offset;
}

}  // namespace

size_t WorkspacePlan::total() const {
  return lay_out(*this, nullptr, nullptr);
}

Workspace WorkspacePlan::carve(void* base) const {
  Workspace w;
  lay_out(*this, static_cast<char*>(base), &w);
  return w;
}

WorkspacePlan plan_workspace(const ModelConfig& config, DType dtype, int64_t max_tokens,
                             int32_t max_seqs, int64_t max_context, bool with_head,
                             int64_t graph_rows) {
  CONVEYOR_ASSERT(max_tokens > 0 && max_seqs > 0 && max_context > 0);
  CONVEYOR_ASSERT(graph_rows >= 0 && graph_rows <= max_tokens);
  const auto half = static_cast<size_t>(dtype_size(dtype));
  const auto rows = static_cast<size_t>(max_tokens);
  WorkspacePlan plan;
  plan.max_tokens = max_tokens;
  plan.max_context = max_context;
  // Decode rows of one launch: one per sequence slot, at most 64 (the split workspace grows
  // with rows x context), never more than the micro-batch.
  plan.decode_rows = std::min<int64_t>({static_cast<int64_t>(max_seqs), 64, max_tokens});
  plan.normed = rows * static_cast<size_t>(config.hidden_size) * half;
  plan.q = rows * static_cast<size_t>(config.q_dim()) * half;
  plan.k = rows * static_cast<size_t>(config.kv_dim()) * half;
  plan.v = plan.k;
  plan.attn = plan.q;
  plan.gate = rows * static_cast<size_t>(config.intermediate_size) * half;
  plan.up = plan.gate;
  plan.indices = 4 * rows * sizeof(int32_t);
  kernels::DecodeAttentionArgs decode{.dtype = dtype,
                                      .n_seqs = plan.decode_rows,
                                      .n_heads = config.n_heads,
                                      .n_kv_heads = config.n_kv_heads,
                                      .head_dim = config.head_dim,
                                      .max_keys = max_context};
  plan.decode = kernels::decode_attention_workspace_bytes(decode);
  if (with_head) {
    plan.head_rows = std::min<int64_t>(max_tokens, std::max<int64_t>(max_seqs, 64));
    const auto head_rows = static_cast<size_t>(plan.head_rows);
    plan.head_x = head_rows * static_cast<size_t>(config.hidden_size) * sizeof(float);
    plan.logits = head_rows * static_cast<size_t>(config.vocab_size) * sizeof(float);
    plan.params = head_rows * sizeof(kernels::SampleRowParams);
    plan.tokens = head_rows * sizeof(int32_t);
  }
  plan.graph_rows = graph_rows;
  plan.graph_x =
      static_cast<size_t>(graph_rows) * static_cast<size_t>(config.hidden_size) * sizeof(float);
  return plan;
}

// ---- DeviceContext ---------------------------------------------------------------------------

DeviceContext::DeviceContext(int device, const WorkspacePlan& plan)
    : device_(device),
      plan_(plan),
      stream_(device),
      gemm_(std::make_unique<Gemm>()),
      memory_(device, plan.total(), "the stage workspace") {
  workspace_ = plan.carve(memory_.get());
}

DeviceContext::~DeviceContext() {
  // The stream's work may still read the workspace: wait, then the members free in reverse.
  synchronize_noexcept();
}

size_t DeviceContext::bytes() const {
  return memory_.bytes() + (gemm_ ? gemm_->workspace_bytes() : 0);
}

void DeviceContext::synchronize() const {
  stream_.synchronize();
}

void DeviceContext::synchronize_noexcept() const noexcept {
  stream_.synchronize_noexcept();
}

}  // namespace conveyor::cuda
