// StageBackend: what the pipeline runtime asks of a backend (CPU, CUDA) for one stage — run its
// layers on a micro-batch, apply the head and sample on the last stage, and keep its KV cache
// in step with the commit barrier. One instance per stage, used by that stage's worker only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "conveyor/sampling.hpp"
#include "conveyor/step_plan.hpp"

namespace conveyor {

// Read-only inputs of one engine step, shared by every stage while the step runs.
struct StepContext {
  // By sequence slot: every token of the sequence so far (prompt + generated); a stage that
  // embeds reads the tokens at its chunks' positions.
  std::span<const std::vector<int32_t>> tokens;
  std::span<const SamplingParams> sampling;  // by sequence slot
  std::span<const LogitsCapture> logits;     // by sequence slot; empty: none anywhere
  bool record_trace = false;                 // runtime: keep one event per instruction

  LogitsCapture capture(int32_t seq) const {
    const auto i = static_cast<size_t>(seq);
    return i < logits.size() ? logits[i] : LogitsCapture::kNone;
  }
};

// The token sampled after `position` of sequence `seq`.
struct SampledToken {
  int32_t seq = 0;
  int64_t position = 0;
  int32_t token = 0;
};

struct LogitsRow {
  int32_t seq = 0;
  int64_t position = 0;
  std::vector<float> values;  // [vocab]
};

// A row of a micro-batch that goes through the head (final norm + lm_head) on the last stage.
struct HeadRow {
  int32_t seq = 0;
  int64_t position = 0;
  int64_t index = 0;     // row in the micro-batch's activations
  bool sample = false;   // the last row of a sampled chunk; otherwise only its logits are wanted
  bool capture = false;  // the caller wants this row's logits back
};

// The rows of `mb` that need logits: the last row of each chunk marked `sample`, and every row
// of the sequences whose logits are captured kAll. Shared by every backend's sample().
std::vector<HeadRow> head_rows(const MicroBatch& mb, const StepContext& ctx);

// Activations kept on a device by the backend that produced them (a CUDA buffer plus the event
// that marks it ready, say). Links move the handle; the bytes stay where they are until the
// receiving stage reads them — over the device interconnect when it can.
class DeviceActivations {
 public:
  virtual ~DeviceActivations() = default;
};

// One micro-batch's activations between stages: [n_tokens, hidden], on the host (CPU backend,
// host links) or behind a device handle (GPU backends, device links). Exactly one is set once a
// stage has computed the micro-batch.
struct Activations {
  std::vector<float> host;
  std::shared_ptr<DeviceActivations> device;
};

class StageBackend {
 public:
  virtual ~StageBackend() = default;

  // For the report at start: where the stage runs, its weight bytes, KV capacity in tokens and
  // workspace, e.g. "cpu (2 threads): weights 120.3 MiB, KV 16384 tokens (24 KiB/token)".
  virtual std::string describe() const = 0;

  // Runs this stage's decoder layers on `mb`. `activations` holds [mb.n_tokens(), hidden]: on
  // entry the previous stage's output (empty on the first stage, which embeds the tokens), on
  // exit this stage's output. Writes the micro-batch's K/V after each sequence's pending length.
  virtual void compute(const MicroBatch& mb, const StepContext& ctx, Activations& activations) = 0;

  // Last stage only: final norm + lm_head on the rows of `mb` that need logits, then samples
  // the chunks marked `sample`. Appends to `tokens`, and to `logits` the rows marked capture.
  virtual void sample(const MicroBatch& mb, const StepContext& ctx, const Activations& activations,
                      std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) = 0;

  // The KV commit barrier (docs/architecture.md), per step: make the writes of `step` to its
  // sequences `seqs` visible, or drop every write to `seqs` since their last commit. Other
  // sequences, possibly in another step in flight, are untouched.
  virtual void commit(int64_t step, std::span<const int32_t> seqs) = 0;
  virtual void rollback(std::span<const int32_t> seqs) = 0;
  // Keep the first `length` committed KV positions of a sequence slot and forget the rest: 0
  // before the slot is reused by another request, more when a conversation continues from a
  // prefix it already computed. Only between steps.
  virtual void truncate(int32_t seq, int64_t length) = 0;
  virtual int64_t committed(int32_t seq) const = 0;
};

}  // namespace conveyor
