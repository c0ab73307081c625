// Engine: the public entry point — open a model directory across S pipeline stages and generate
// tokens for batches of requests.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conveyor/dtype.hpp"
#include "conveyor/error.hpp"
#include "conveyor/model_config.hpp"
#include "conveyor/partition.hpp"
#include "conveyor/process_group.hpp"
#include "conveyor/sampling.hpp"
#include "conveyor/schedule.hpp"
#include "conveyor/step_plan.hpp"
#include "conveyor/trace.hpp"

namespace conveyor {

namespace detail {
struct EngineHooks;  // tests only (src/engine/engine_hooks.hpp)
}

enum class BackendKind {
  kCpu,   // fp32 reference backend, one thread pool per stage
  kCuda,  // one CUDA device context per stage (stages may share a device)
  kAuto,  // CUDA when conveyor was built with it and a GPU is present, else CPU
};

// How activations travel between stages.
enum class Transport {
  kLocal,  // in process: host memory (cpu), or device-to-device copies on one GPU or between
           // peers (cuda)
  kNccl,   // NCCL send/recv between stages on distinct GPUs (cuda; one rank per stage)
};

// Progress of Engine::open's weight loading, reported after each tensor.
struct LoadProgress {
  uint64_t bytes_done = 0;   // read from the checkpoint so far
  uint64_t bytes_total = 0;  // size of the checkpoint's files
  double seconds = 0.0;      // since loading started
  std::string tensor;        // the tensor just loaded (Hugging Face name)
};

// What Engine::open read and built.
struct LoadStats {
  std::string format;         // "GGUF v3, 272 tensors: 210 Q4_1, ..." or "safetensors, ..."
  uint64_t file_bytes = 0;    // size of the checkpoint's files
  uint64_t bytes_read = 0;    // bytes read from them (all stages)
  uint64_t weight_bytes = 0;  // host fp32 weights built (0 when stages build on a device)
  double seconds = 0.0;       // the whole of Engine::open
};

// Where the stages run.
struct DeviceOptions {
  BackendKind backend = BackendKind::kCpu;
  // CUDA device of each stage (empty: 0, 1, ..., n_stages-1). A device may repeat
  // (e.g. {0, 0, 0, 0}: four stages on one GPU, each with its own streams).
  std::vector<int> cuda_devices;
  // Weights (and, on a GPU, activations): unset takes the backend's default, kF32 on the CPU
  // (the reference) and kBF16 on a GPU. The CPU stores kF32 or kBF16 weights (kBF16: widened in
  // registers, fp32 accumulation, half the memory and bandwidth); a GPU takes kBF16 or kF16.
  std::optional<DType> dtype;
  Transport transport = Transport::kLocal;
  // CUDA: capture each stage's decode micro-batches (every chunk one token) in CUDA graphs, one
  // per batch size and context bucket, and replay them instead of launching kernel by kernel.
  // Off: every kernel is launched each step (the same kernels and sums: the same results).
  bool cuda_graphs = true;
  int threads_per_stage = 1;  // cpu: each stage has its own pool, S stages use S * T cores
  // cpu: every token's result is bitwise the same whatever else shares its step (the batch, the
  // chunking, the load on a server): linear layers use the row-independent kernel for any row
  // count instead of OpenBLAS past 16 rows. Costs prefill speed (about 0.6x at 128 rows on one
  // thread, docs/benchmarks.md); decode is unchanged. Attention is row-independent either way.
  bool batch_invariant = false;
  // cpu: compute from the checkpoint's file mapping in place wherever the file already holds a
  // tensor as the stage stores it (F32; BF16 under kBF16): resident once, as page cache shared
  // with other processes mapping the file, and no copy at load. Off (--no-mmap): copy every
  // tensor, so a file overwritten in place while the engine runs cannot change its weights.
  bool map_weights = true;
};

// How much the engine holds: sequences at once, positions per sequence, requests waiting.
struct CapacityOptions {
  int32_t max_batch = 8;    // sequence slots: requests running at once (KV caches)
  int64_t max_context = 0;  // prompt + generated tokens; 0: min(max_position_embeddings, 4096)
  // Requests submitted while every slot is taken wait first come, first served; past this many
  // waiting, submit() fails with ErrorCode::kOverloaded instead of queueing without bound (0:
  // refuse whatever finds no free slot).
  int32_t max_waiting = 256;
};

struct EngineOptions {
  // The pipeline's shape, one spelling: `partition` is "even" (extra layers to the first
  // stages) or "balanced" (the cost model's exact min-max split, the lm_head counted on the
  // last stage) over `n_stages` stages (0: one), or layer counts "5,6,6,7" or a layout
  // "emb,0-4|5-10|11-16|17-23,head", which imply the stage count (n_stages 0, or the same).
  int n_stages = 0;
  std::string partition = "even";
  DeviceOptions device;
  CapacityOptions capacity;
  // Chunking, micro-batches and the decode mode (strict or cohorts): see SchedulePolicy.
  SchedulePolicy schedule;
  int64_t link_timeout_ms = 120'000;
  // Benchmarks and tests: draw every weight from a deterministic generator keyed by (seed,
  // tensor name) instead of reading a checkpoint. Only the config is read: Engine::open's path
  // may then name a config.json file as well as a directory. CUDA stages draw the values on
  // their device, so an 8B-shaped model needs neither 16 GB of files nor a host copy. The same
  // seed gives the same weights on every backend (16-bit devices round them as they would a
  // checkpoint's).
  std::optional<uint64_t> random_weights_seed;
  // Called on the opening thread after each tensor is loaded (progress bars for large models).
  std::function<void(const LoadProgress&)> on_load_progress;
  // Stages in several processes (conveyor::mpi_world(): MPI ranks, on one machine or many).
  // Every process opens the engine with the same options; of S stages (n_stages, 0: one per
  // process; a multiple of the process count) rank r runs [r*S/N, (r+1)*S/N) and loads only
  // their weights. Rank 0, the leader, plans every step, takes every request and gets every
  // token; the others call follow(). CUDA stages pass activations between processes over NCCL
  // (one GPU per process; not yet run on GPUs). Unset: all stages run here.
  std::shared_ptr<ProcessGroup> processes;

  // Throws conveyor::Error(kInvalidArgument) naming the field, value, limit and fix.
  void validate() const;
};

struct Request {
  std::vector<int32_t> prompt;  // token ids, each in [0, vocab_size)
  int64_t max_new_tokens = 16;  // 0: prefill only (useful with logits)
  SamplingParams sampling;
  bool stop_at_eos = true;                      // stop at the model's eos_token_id(s)
  std::vector<int32_t> stop_token_ids;          // further ids that end the request
  LogitsCapture logits = LogitsCapture::kNone;  // rows returned in RequestResult::logits
};

enum class FinishReason {
  kLength,     // max_new_tokens generated
  kStopToken,  // an eos or stop token was generated (it is the last token)
  kCancelled,  // cancel(), or the engine stopped
  kError,      // a step of the request failed (RequestResult::error says where and why)
};
std::string_view to_string(FinishReason reason);

using RequestId = uint64_t;

struct RequestResult {
  RequestId id = 0;
  std::vector<int32_t> tokens;  // generated ids (the prompt is not repeated)
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;  // prompt tokens whose KV came from the slot's previous request
  FinishReason finish = FinishReason::kLength;
  std::string error;                            // kError: the failure; kCancelled: why
  ErrorCode error_code = ErrorCode::kInternal;  // kError, kCancelled
  int64_t logits_rows = 0;
  std::vector<float> logits;  // [logits_rows, vocab] when Request::logits asks
};

// What a submitted request's callback sees, on the engine's scheduling thread, between steps:
// one event per generated token, and the last event has `finished` set (with the token that
// ended it, or with none when it was cancelled, failed or asked for no tokens).
struct RequestEvent {
  RequestId id = 0;
  std::optional<int32_t> token;
  int64_t index = 0;  // of `token` among the generated ones (0: the first)
  bool finished = false;
  const RequestResult* result = nullptr;  // when finished; valid during the callback only
};
using RequestCallback = std::function<void(const RequestEvent&)>;

// Streamed as each token is sampled (on the calling thread, between steps).
struct TokenEvent {
  size_t request = 0;
  int32_t token = 0;
  int64_t index = 0;  // 0 for the first generated token
  bool finished = false;
};

struct GenerateOptions {
  // Logits per request in GenerateResult: the row each generated token was sampled from
  // (one per generated token); with all_logits, first one row per prompt position.
  bool return_logits = false;
  bool all_logits = false;
  // Keep a per-instruction trace of the call's steps (GenerateResult::trace).
  bool record_trace = false;
  // Keep KV caches between calls: request i reuses the KV entries of the longest prefix its
  // prompt shares with what request i of the previous call computed (a chat's history), and
  // computes only the rest. Results are those of computing everything (within rounding). Not
  // with all_logits, whose rows need every position computed.
  bool reuse_cache = false;
  std::function<void(const TokenEvent&)> on_token;
};

struct StepStats {
  int64_t step = 0;
  Phase phase = Phase::kPrefill;
  int32_t cohort = 0;
  int64_t n_seqs = 0;
  int64_t n_tokens = 0;
  int n_micro_batches = 0;
  double seconds = 0.0;  // from submission to its outcome
};

struct GenerateResult {
  std::vector<RequestResult> requests;
  std::vector<StepStats> steps;
  // Tokens computed in prefill steps and the wall time while any was in flight; the same for
  // decode steps (steps of several cohorts overlap: their time counts once).
  int64_t prefill_tokens = 0;
  double prefill_seconds = 0.0;
  int64_t decode_tokens = 0;
  double decode_seconds = 0.0;
  Trace trace;  // when GenerateOptions::record_trace
};

// A snapshot of the engine's serving state (thread-safe to take).
struct EngineMetrics {
  int64_t requests_waiting = 0;
  int64_t requests_running = 0;  // holding a KV slot
  int64_t requests_finished = 0;
  int64_t requests_cancelled = 0;
  int64_t requests_failed = 0;
  int64_t prompt_tokens = 0;  // computed (reused ones not counted)
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  int32_t kv_slots = 0;
  int32_t kv_slots_used = 0;
  std::vector<double> stage_busy_seconds;  // compute + sample time per stage since open
  double seconds = 0.0;                    // since open
};

// Two ways to run requests. generate(batch) runs a batch to completion on the calling thread.
// submit() queues requests that arrive over time — from any thread — and a scheduling loop
// (start_serving() on a background thread, or step() driven by the caller) admits them as KV
// slots free up, prefills them in chunks between running decodes and streams their tokens.
// After a failed step (the error names the stage and instruction) every KV cache is back at its
// last commit and the engine stays usable; only the requests of that step end with kError.
class Engine {
 public:
  // Opens the checkpoint at `model` — a Hugging Face directory (config.json + *.safetensors), a
  // .gguf file, or a directory holding one .gguf — partitions the layers, loads each stage's
  // weights (only its layers; GGUF tensors are dequantized) and starts the stage workers. With
  // options.random_weights_seed, `model` may also be the path of a config.json file, and no
  // weights are read.
  static Engine open(const std::filesystem::path& model, const EngineOptions& options = {});
  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;
  ~Engine();  // stops serving (cancelling what runs) and the stage workers

  const ModelConfig& config() const;
  const EngineOptions& options() const;
  const Partition& partition() const;
  int64_t max_context() const;
  double load_seconds() const;
  const LoadStats& load_stats() const;
  // Backend the stages run on (kAuto resolved).
  BackendKind backend() const;
  // One line per stage: device, layers, weight bytes, KV capacity in tokens, workspace (and,
  // across processes, the rank and host that run it: every stage's line on the leader).
  std::vector<std::string> stage_reports() const;

  // Across processes (EngineOptions::processes): false on every rank but 0, whose engine alone
  // runs requests. True without processes.
  bool leader() const;
  // A follower (rank > 0): runs the steps the leader sends on this process' stages until the
  // leader's engine is destroyed. Throws when this process cannot go on (a link to a neighbour
  // failed or timed out: the error names the rank, stage and step); the caller should then end
  // the job (ProcessGroup::abort). kInvalidArgument on the leader.
  void follow();

  // Runs `requests` (at most max_batch) to completion: request i in KV slot i, one prefill step
  // for all prompts (chunked as the schedule says), then decode steps. Not while serving.
  // Throws the first failure of a step (the engine stays usable).
  GenerateResult generate(const std::vector<Request>& requests,
                          const GenerateOptions& options = {});

  // Queues `request`; `on_event` receives its tokens and its end on the scheduling thread
  // (keep it short: the next step waits for it). Thread-safe. Throws
  // conveyor::Error(kInvalidArgument) when the request can never run (naming the value and
  // the limit: an empty prompt, an id outside the vocabulary, prompt + max_new_tokens over
  // max_context), kOverloaded when capacity.max_waiting requests already wait, and kCancelled
  // once the engine is stopping.
  RequestId submit(Request request, RequestCallback on_event);
  // Ends a waiting or running request: its last event comes with FinishReason::kCancelled and
  // its KV slot is freed at the next step boundary. Thread-safe; false when the id is unknown or
  // already finished.
  bool cancel(RequestId id);
  // One scheduling round on the calling thread: admit waiting requests, submit a step for every
  // cohort that can take one, wait for one step and deliver its tokens. Returns false at once
  // when there is nothing to run. Not while serving.
  bool step();
  // Runs the scheduling loop on a background thread until stop_serving().
  void start_serving();
  // Stops accepting requests (submit() throws kCancelled), lets the running and waiting ones
  // finish for up to `grace`, cancels the rest and joins the loop. Idempotent.
  void stop_serving(std::chrono::milliseconds grace = std::chrono::milliseconds(0));
  bool serving() const;
  EngineMetrics metrics() const;

 private:
  friend struct detail::EngineHooks;
  static Engine open(const std::filesystem::path& model, const EngineOptions& options,
                     const detail::EngineHooks* hooks);
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace conveyor
