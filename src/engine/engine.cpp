// Engine: opens a model across pipeline stages and runs generate() as a sequence of validated
// step plans — one prefill step, then strictly one decode step at a time behind the KV commit
// barrier (spec: step dependency).
#include "conveyor/engine.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "conveyor/checkpoint.hpp"
#include "conveyor/cost_model.hpp"
#include "conveyor/error.hpp"
#include "conveyor/partitioner.hpp"
#include "core/check.hpp"
#include "core/stats.hpp"
#include "core/strings.hpp"
#include "dist/distributed.hpp"
#include "engine/engine_hooks.hpp"
#include "engine/scheduler.hpp"
#include "engine/stage_factory.hpp"
#include "model/weights.hpp"
#include "runtime/pipeline.hpp"

namespace conveyor {

namespace {

// Forwards to the checkpoint's tensors and reports progress after each tensor, in bytes read
// out of the file's size (a tied embedding read twice can pass 100%; the total is clamped).
class ProgressTensors final : public TensorSource {
 public:
  ProgressTensors(const TensorSource& inner, uint64_t total_bytes,
                  std::function<void(const LoadProgress&)> report)
      : inner_(inner), total_(total_bytes), report_(std::move(report)), start_(Clock::now()) {}

  bool contains(std::string_view name) const override { return inner_.contains(name); }
  std::vector<float> load_f32(std::string_view name,
                              std::span<const int64_t> expected_shape) const override {
    std::vector<float> values = inner_.load_f32(name, expected_shape);
    report(name);
    return values;
  }
  std::optional<StoredTensor> stored(std::string_view name, std::span<const int64_t> expected_shape,
                                     DType dtype) const override {
    std::optional<StoredTensor> tensor = inner_.stored(name, expected_shape, dtype);
    if (tensor) report(name);
    return tensor;
  }
  uint64_t bytes_read() const override { return inner_.bytes_read(); }

 private:
  void report(std::string_view name) const {
    if (!report_) return;
    const uint64_t done = std::min(inner_.bytes_read(), total_);
    report_(LoadProgress{.bytes_done = done,
                         .bytes_total = total_,
                         .seconds = seconds_since(start_),
                         .tensor = std::string(name)});
  }

  const TensorSource& inner_;
  uint64_t total_;
  std::function<void(const LoadProgress&)> report_;
  Clock::time_point start_;
};

// The partition of `options` (see EngineOptions::partition): n_stages 0 means one stage for
// "even" and "balanced", and whatever counts or a layout imply.
Partition make_partition(const ModelConfig& config, const EngineOptions& options,
                         BackendKind backend, int64_t max_context) {
  const int n_stages = std::max(options.n_stages, 1);
  if (n_stages > config.n_layers &&
      (options.partition == "even" || options.partition == "balanced")) {
    fail(ErrorCode::kInvalidArgument,
         "{} stages but the model has only {} layers; use at most {} stages", n_stages,
         config.n_layers, config.n_layers);
  }
  if (options.partition != "balanced") {
    return parse_partition_spec(options.partition, config.n_layers,
                                options.partition == "even" ? n_stages : options.n_stages);
  }
  // Balanced: per-unit costs in the precision the backend runs; the ratios between the layers
  // and the head are what matter, so the device preset only needs the right kind of machine.
  const bool gpu = backend == BackendKind::kCuda;
  const DType dtype = options.device.dtype.value_or(gpu ? DType::kBF16 : DType::kF32);
  const CostModel model(config,
                        {.weight_dtype = dtype, .kv_dtype = dtype, .activation_dtype = dtype});
  PartitionerOptions partitioner;
  partitioner.n_stages = n_stages;
  partitioner.topology.devices = {device_preset(gpu ? "h100" : "cpu")};
  partitioner.topology.devices.front().memory_bytes = 0;  // memory is checked by the stages
  partitioner.objective = Objective::kMixed;
  partitioner.max_context = max_context;
  partitioner.max_batch = options.capacity.max_batch;
  return balanced_partition(model, partitioner).partition;
}

// NCCL runs one rank per GPU, so two processes with neighbouring CUDA stages on one host must not
// share a GPU (their link would be a communicator of one GPU twice). `mine`: the PCI bus ids of
// this process' first and last stage's GPUs and its host (by bus id: with per-process
// CUDA_VISIBLE_DEVICES every rank's GPU may be its device 0). Collective: throws on every rank.
void check_neighbour_gpus(dist::Distributed& processes, const std::string& mine) {
  const std::vector<std::string> all = processes.gather(mine);
  processes.decided_by_rank0([&] {
    struct Rank {
      std::string first, last, host;
    };
    std::vector<Rank> ranks(all.size());
    for (size_t r = 0; r < all.size(); ++r) {
      std::istringstream in(all[r]);
      in >> ranks[r].first >> ranks[r].last >> std::ws;
      std::getline(in, ranks[r].host);
    }
    for (size_t r = 1; r < ranks.size(); ++r) {
      if (ranks[r].host == ranks[r - 1].host && ranks[r].first == ranks[r - 1].last) {
        fail(ErrorCode::kInvalidArgument,
             "ranks {} and {} run neighbouring CUDA stages on the same GPU (PCI {}) of {}, but "
             "NCCL runs one rank per GPU; give each process its own GPU (--devices, one id per "
             "stage, or CUDA_VISIBLE_DEVICES per rank) or run those stages in one process",
             r - 1, r, ranks[r].first, ranks[r].host);
      }
    }
    return std::string();
  });
}
}  // namespace

void EngineOptions::validate() const {
  if (n_stages < 0) {
    fail(ErrorCode::kInvalidArgument,
         "n_stages is {} but must be >= 1 (or 0: as the partition implies, one for \"even\")",
         n_stages);
  }
  if (device.batch_invariant && device.backend == BackendKind::kCuda) {
    fail(ErrorCode::kInvalidArgument,
         "batch_invariant is implemented by the cpu backend only; use --backend cpu or drop "
         "--batch-invariant");
  }
  if (device.threads_per_stage < 1) {
    fail(ErrorCode::kInvalidArgument, "device.threads_per_stage is {} but must be at least 1",
         device.threads_per_stage);
  }
  schedule.validate();
  if (capacity.max_batch < 1) {
    fail(ErrorCode::kInvalidArgument, "max_batch is {} but must be at least 1", capacity.max_batch);
  }
  if (capacity.max_waiting < 0) {
    fail(ErrorCode::kInvalidArgument,
         "max_waiting is {} but must be >= 0 (0: refuse requests when every slot is busy)",
         capacity.max_waiting);
  }
  if (capacity.max_context < 0) {
    fail(ErrorCode::kInvalidArgument,
         "max_context is {} but must be >= 0 (0 picks min(max_position_embeddings, 4096))",
         capacity.max_context);
  }
  if (link_timeout_ms < 1) {
    fail(ErrorCode::kInvalidArgument, "link_timeout_ms is {} but must be at least 1",
         link_timeout_ms);
  }
}

struct Engine::Impl {
  Impl(ModelConfig config_in, EngineOptions options_in, Partition partition_in)
      : config(std::move(config_in)),
        options(std::move(options_in)),
        partition(std::move(partition_in)) {}

  ModelConfig config;
  EngineOptions options;
  Partition partition;
  BackendKind backend = BackendKind::kCpu;
  int64_t max_context = 0;
  double load_seconds = 0.0;
  LoadStats load_stats;
  std::vector<std::string> stage_reports;
  std::shared_ptr<dist::Distributed> processes;  // across processes only
  std::unique_ptr<Pipeline> pipeline;
  std::unique_ptr<Scheduler> scheduler;
  // The background scheduling loop (start_serving).
  std::thread loop;
  std::atomic<bool> stop_requested{false};
  std::atomic<int64_t> stop_deadline_ns{0};  // steady clock; cancel what remains after it

  ~Impl() {
    stop_serving(std::chrono::milliseconds(0));
    // The stage workers go first: a step still in flight reads the scheduler's token vectors.
    pipeline.reset();
  }
  void check_batch(const std::vector<Request>& requests, const GenerateOptions& gen) const;
  void check_leader(std::string_view what) const;
  void serve_loop();
  void stop_serving(std::chrono::milliseconds grace);
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

const ModelConfig& Engine::config() const {
  return impl_->config;
}
const EngineOptions& Engine::options() const {
  return impl_->options;
}
const Partition& Engine::partition() const {
  return impl_->partition;
}
int64_t Engine::max_context() const {
  return impl_->max_context;
}
double Engine::load_seconds() const {
  return impl_->load_seconds;
}
const LoadStats& Engine::load_stats() const {
  return impl_->load_stats;
}
BackendKind Engine::backend() const {
  return impl_->backend;
}
std::vector<std::string> Engine::stage_reports() const {
  return impl_->stage_reports;
}
bool Engine::leader() const {
  return !impl_->processes || impl_->processes->rank() == 0;
}

void Engine::follow() {
  if (leader()) {
    fail(ErrorCode::kInvalidArgument,
         "follow() is for ranks other than 0; rank 0 runs the requests (generate, submit, "
         "start_serving)");
  }
  impl_->processes->follow(*impl_->pipeline);
}

void Engine::Impl::check_leader(std::string_view what) const {
  if (processes && processes->rank() != 0) {
    fail(ErrorCode::kInvalidArgument,
         "{} runs on rank 0 only; this process is rank {}, which runs its stages in follow()", what,
         processes->rank());
  }
}

Engine Engine::open(const std::filesystem::path& model, const EngineOptions& options) {
  return open(model, options, nullptr);
}

Engine Engine::open(const std::filesystem::path& model, const EngineOptions& options,
                    const detail::EngineHooks* hooks) {
  const auto start = Clock::now();
  options.validate();
  // Across processes: an engine's own channel (collective), made first so that a check that
  // fails on one process only (a model file missing on its host, too little memory there) fails
  // on every one instead of leaving the others waiting; rank 0 decides the partition for all.
  std::shared_ptr<dist::Distributed> processes;
  if (options.processes && options.processes->size() > 1) {
    processes = dist::Distributed::create(*options.processes,
                                          std::chrono::milliseconds(options.link_timeout_ms));
  }
  // A check that may fail on some processes only: across processes, all fail together.
  const auto on_every_rank = [&](const std::function<void()>& check) {
    if (processes) {
      processes->fail_together(check);
    } else {
      check();
    }
  };
  const bool random_weights = options.random_weights_seed.has_value();
  std::optional<Checkpoint> checkpoint;
  ModelConfig config;
  int64_t max_context = 0;
  BackendKind backend = BackendKind::kCpu;
  const auto open_model = [&] {
    if (random_weights && !std::filesystem::exists(model)) {
      fail(ErrorCode::kInvalidArgument,
           "model {} does not exist; with random weights pass a config.json file or a directory "
           "holding one",
           model.string());
    }
    // Random weights read only the config; otherwise the checkpoint (safetensors or GGUF) is
    // opened and validated as a whole before any stage loads.
    if (!random_weights) checkpoint = Checkpoint::open(model);
    config = checkpoint ? checkpoint->config : ModelConfig::load(model);
    const int64_t default_context = std::min<int64_t>(config.max_position_embeddings, 4096);
    max_context = options.capacity.max_context > 0 ? options.capacity.max_context : default_context;
    if (max_context > config.max_position_embeddings) {
      fail(ErrorCode::kInvalidArgument,
           "max_context {} exceeds the model's max_position_embeddings {}; lower "
           "EngineOptions::capacity.max_context (--max-context)",
           max_context, config.max_position_embeddings);
    }
    if (config.sliding_window && max_context > *config.sliding_window) {
      fail(ErrorCode::kInvalidArgument,
           "max_context {} exceeds the model's sliding_window {}, and conveyor does not "
           "implement windowed attention; lower EngineOptions::capacity.max_context to at most {}",
           max_context, *config.sliding_window, *config.sliding_window);
    }
    backend = resolve_backend(options.device.backend);
    if (const std::optional<DType> dtype = options.device.dtype) {
      const bool gpu = backend == BackendKind::kCuda;
      const bool ok = gpu ? (*dtype == DType::kBF16 || *dtype == DType::kF16)
                          : (*dtype == DType::kF32 || *dtype == DType::kBF16);
      if (!ok) {
        fail(ErrorCode::kInvalidArgument,
             "dtype {} is not one the {} backend computes with; use {}", dtype_flag(*dtype),
             gpu ? "cuda" : "cpu", gpu ? "bf16 or f16" : "f32 or bf16");
      }
    }
    if (backend == BackendKind::kCpu) {
      check_host_memory(config, options.device.dtype.value_or(DType::kF32),
                        options.processes ? options.processes->size() : 1);
    }
  };
  on_every_rank(open_model);
  EngineOptions effective = options;
  if (processes && effective.n_stages == 0 &&
      (effective.partition == "even" || effective.partition == "balanced")) {
    effective.n_stages = processes->size();
  }
  Partition partition = Partition::even(1, 1);
  if (processes) {
    const std::string counts = processes->decided_by_rank0(
        [&] { return make_partition(config, effective, backend, max_context).to_string(); });
    partition = Partition::parse(counts, config.n_layers);
    processes->check_same_everywhere(
        fmt::format("{} layers, hidden {}, vocab {}, max_context {}, max_batch {}, dtype {}, {} "
                    "stages, {} backend, {} transport",
                    config.n_layers, config.hidden_size, config.vocab_size, max_context,
                    options.capacity.max_batch,
                    dtype_flag(options.device.dtype.value_or(DType::kF32)), partition.n_stages(),
                    backend == BackendKind::kCuda ? "cuda" : "cpu",
                    options.device.transport == Transport::kNccl ? "nccl" : "local"),
        "engine");
    // Every rank has the same options now, so this refusal (and the one below) is everyone's.
    if (backend == BackendKind::kCuda && options.device.transport == Transport::kNccl) {
      fail(ErrorCode::kInvalidArgument,
           "CUDA stages in different processes always pass activations over NCCL, and the "
           "stages inside one process use the local transport; drop --transport nccl");
    }
    if (partition.n_stages() % processes->size() != 0) {
      fail(ErrorCode::kInvalidArgument,
           "{} stages cannot be shared by {} processes; use a multiple of {} stages (--stages)",
           partition.n_stages(), processes->size(), processes->size());
    }
  } else {
    partition = make_partition(config, options, backend, max_context);
  }
  auto impl = std::make_unique<Impl>(config, options, std::move(partition));
  impl->max_context = max_context;
  impl->processes = processes;

  impl->backend = backend;
  const int n_stages = impl->partition.n_stages();
  if (options.schedule.cohorts > n_stages) {
    fail(ErrorCode::kInvalidArgument,
         "schedule.cohorts is {} but the pipeline has {} stages; more cohorts than stages cannot "
         "overlap (use at most {}, or 0 for one per stage)",
         options.schedule.cohorts, n_stages, n_stages);
  }
  // This process' stages: all of them, or its share of a pipeline that spans processes.
  const int per_rank = processes ? n_stages / processes->size() : n_stages;
  const int rank = processes ? processes->rank() : 0;
  const int first_stage = rank * per_rank;
  const int end_stage = first_stage + per_rank;

  // CUDA: the device of each stage, checked where it runs (each process sees its own GPUs), and
  // across processes which GPUs this process' end stages run on.
  std::vector<int> devices(static_cast<size_t>(n_stages), 0);
  std::string gpus;
  on_every_rank([&] {
    if (impl->backend != BackendKind::kCuda) return;
    devices = stage_devices(options.device, n_stages, first_stage, end_stage);
    if (processes) {
      gpus = fmt::format("{} {} {}", cuda_pci_bus_id(devices[static_cast<size_t>(first_stage)]),
                         cuda_pci_bus_id(devices[static_cast<size_t>(end_stage - 1)]),
                         options.processes->host());
    }
  });

  // Before any weights load: a transport that cannot work fails fast.
  auto make_link = make_links(impl->backend, config, options, devices, impl->max_context);
  if (processes) {
    if (backend == BackendKind::kCuda) check_neighbour_gpus(*processes, gpus);
    // The links that cross into the previous process and out to the next one: host rows over
    // the process transport, or CUDA rows over NCCL with the rest over the transport.
    auto crossing = [processes, backend, config, options, devices, max_context = impl->max_context](
                        int from, int peer) -> std::unique_ptr<Link> {
      if (backend != BackendKind::kCuda) return processes->make_link(from, peer, 2);
      const bool sender = peer > processes->rank();
      return make_cuda_peer_link(config, options, max_context, from, sender,
                                 devices[static_cast<size_t>(sender ? from : from + 1)],
                                 processes->make_peer_channel(peer));
    };
    make_link = [first_stage, end_stage, rank, crossing,
                 inner = std::move(make_link)](int from) -> std::unique_ptr<Link> {
      if (from == first_stage - 1) return crossing(from, rank - 1);
      if (from == end_stage - 1) return crossing(from, rank + 1);
      return inner ? inner(from) : std::make_unique<HostLink>();
    };
  }
  if (hooks != nullptr && hooks->wrap_link) {
    auto inner = make_link ? std::move(make_link) : [](int) -> std::unique_ptr<Link> {
      return std::make_unique<HostLink>();
    };
    make_link = [inner = std::move(inner), wrap = hooks->wrap_link](int from) {
      return wrap(from, inner(from));
    };
  }
  std::optional<ProgressTensors> tensors;
  if (checkpoint) {
    tensors.emplace(*checkpoint->tensors, checkpoint->file_bytes, options.on_load_progress);
    impl->load_stats.format = checkpoint->description;
    impl->load_stats.file_bytes = checkpoint->file_bytes;
  } else {
    impl->load_stats.format = fmt::format("random weights (seed {})", *options.random_weights_seed);
  }
  std::vector<std::unique_ptr<StageBackend>> stages;
  for (int s = first_stage; s < end_stage; ++s) {
    const LayerRange range = impl->partition.range(s);
    StageWeightsSpec spec{.first_layer = range.first,
                          .last_layer = range.last,
                          .embedding = impl->partition.has_embedding(s),
                          .head = impl->partition.has_head(s)};
    StageSource weights =
        random_weights ? StageSource(random_stage_draws(config, spec, *options.random_weights_seed))
                       : StageSource(StageCheckpoint{.tensors = &*tensors, .spec = spec});
    if (!random_weights) {
      impl->load_stats.weight_bytes += static_cast<uint64_t>(stage_f32_bytes(config, spec));
    }
    stages.push_back(make_stage_backend(impl->backend, config, std::move(weights), options,
                                        StageResources{.stage = s,
                                                       .device = devices[static_cast<size_t>(s)],
                                                       .max_context = impl->max_context}));
    if (hooks != nullptr && hooks->wrap_stage) {
      stages.back() = hooks->wrap_stage(s, std::move(stages.back()));
    }
    impl->stage_reports.push_back(fmt::format("stage {}: layers [{}, {}){}{}: {}", s, range.first,
                                              range.last, spec.embedding ? " + embedding" : "",
                                              spec.head ? " + head" : "",
                                              stages.back()->describe()));
  }
  PipelineOptions pipeline{.link_timeout = std::chrono::milliseconds(options.link_timeout_ms),
                           .make_link = std::move(make_link),
                           .first_stage = first_stage,
                           .n_stages = n_stages};
  if (processes) {
    // The layout, on rank 0: which rank runs which stages, where, over what.
    const std::string where = fmt::format(" [rank {} on {}, {}]", rank, options.processes->host(),
                                          options.processes->transport());
    for (std::string& line : impl->stage_reports)
      line += where;
    std::string mine;
    for (const std::string& line : impl->stage_reports)
      mine += line + "\n";
    const std::vector<std::string> all =
        processes->gather(fmt::format("rank {} ({}, stages [{}, {}))\n", rank,
                                      options.processes->host(), first_stage, end_stage) +
                          mine);
    if (rank == 0) {
      std::vector<std::string> names;
      impl->stage_reports.clear();
      for (const std::string& text : all) {
        bool name = true;  // each rank's first line names it
        for (std::string_view line : split(text, '\n')) {
          if (line.empty()) continue;
          (name ? names : impl->stage_reports).emplace_back(line);
          name = false;
        }
      }
      pipeline.remote = processes->make_remote(std::move(names));
    } else {
      pipeline.on_local_done = [processes](StepReport&& report) {
        processes->report(std::move(report));
      };
    }
  }
  impl->pipeline = std::make_unique<Pipeline>(std::move(stages), pipeline);
  impl->scheduler =
      std::make_unique<Scheduler>(*impl->pipeline, impl->config,
                                  SchedulerOptions{.policy = options.schedule,
                                                   .slots = options.capacity.max_batch,
                                                   .max_context = impl->max_context,
                                                   .max_waiting = options.capacity.max_waiting});
  impl->load_seconds = seconds_since(start);
  impl->load_stats.seconds = impl->load_seconds;
  if (tensors) impl->load_stats.bytes_read = tensors->bytes_read();
  spdlog::debug("opened {}{} in {:.2f}s: {} stages, partition {}", model.string(),
                random_weights ? " (random weights)" : "", impl->load_seconds,
                impl->partition.n_stages(), impl->partition.to_string());
  return Engine(std::move(impl));
}

void Engine::Impl::check_batch(const std::vector<Request>& requests,
                               const GenerateOptions& gen) const {
  if (requests.empty()) {
    fail(ErrorCode::kInvalidArgument, "generate() got no requests; pass at least one prompt");
  }
  if (static_cast<int64_t>(requests.size()) > options.capacity.max_batch) {
    fail(ErrorCode::kInvalidArgument,
         "batch of {} requests exceeds max_batch {}; raise EngineOptions::capacity.max_batch "
         "(--max-batch) or split the batch",
         requests.size(), options.capacity.max_batch);
  }
  if (gen.all_logits && !gen.return_logits) {
    fail(ErrorCode::kInvalidArgument, "all_logits needs return_logits");
  }
  if (loop.joinable()) {
    fail(ErrorCode::kInvalidArgument,
         "generate() while the engine serves in the background; submit() the requests instead");
  }
  if (!scheduler->idle()) {
    fail(ErrorCode::kInvalidArgument,
         "generate() while submitted requests are still queued or running; finish them with "
         "step() first");
  }
}

namespace {

// Seconds covered by the union of the records' [start, end) spans of one phase.
double phase_seconds(std::vector<StepRecord> records, Phase phase) {
  std::erase_if(records, [&](const StepRecord& r) { return r.stats.phase != phase; });
  std::sort(records.begin(), records.end(),
            [](const StepRecord& a, const StepRecord& b) { return a.start < b.start; });
  double total = 0.0;
  Clock::time_point covered{};
  for (const StepRecord& r : records) {
    const Clock::time_point from = std::max(r.start, covered);
    if (r.end > from) total += std::chrono::duration<double>(r.end - from).count();
    covered = std::max(covered, r.end);
  }
  return total;
}

}  // namespace

GenerateResult Engine::generate(const std::vector<Request>& requests, const GenerateOptions& gen) {
  Impl& d = *impl_;
  d.check_leader("generate()");
  d.check_batch(requests, gen);
  Scheduler& scheduler = *d.scheduler;
  d.pipeline->take_trace();  // drop events of earlier steps
  scheduler.take_step_records();
  scheduler.set_record_trace(gen.record_trace);

  const size_t n = requests.size();
  GenerateResult result;
  result.requests.resize(n);
  std::vector<bool> done(n, false);
  size_t n_done = 0;
  const bool reuse = gen.reuse_cache && !gen.all_logits;
  std::vector<RequestId> ids;
  try {
    for (size_t i = 0; i < n; ++i) {
      Request request = requests[i];
      if (gen.return_logits) {
        request.logits = gen.all_logits ? LogitsCapture::kAll : LogitsCapture::kSampled;
      }
      auto on_event = [&, i](const RequestEvent& e) {
        if (e.token && gen.on_token) {
          gen.on_token(TokenEvent{
              .request = i, .token = *e.token, .index = e.index, .finished = e.finished});
        }
        if (e.finished) {
          result.requests[i] = *e.result;
          done[i] = true;
          ++n_done;
        }
      };
      ids.push_back(
          scheduler.submit(std::move(request), on_event,
                           Admission{.slot = static_cast<int32_t>(i), .reuse_prefix = reuse}));
    }
    while (n_done < n && scheduler.run_once()) {
    }
  } catch (...) {
    // A request refused at submit, or a broken pipeline: none of this call's requests stays
    // (their callbacks point into this frame).
    try {
      for (RequestId id : ids)
        scheduler.cancel(id);
      while (!scheduler.idle() && scheduler.run_once()) {
      }
    } catch (const Error& e) {
      scheduler.fail_all(e);
    }
    scheduler.set_record_trace(false);
    throw;
  }
  scheduler.set_record_trace(false);
  CONVEYOR_ASSERT(n_done == n);
  for (const RequestResult& r : result.requests) {
    if (r.finish == FinishReason::kError) throw Error(r.error_code, r.error);
  }
  const std::vector<StepRecord> records = scheduler.take_step_records();
  for (const StepRecord& r : records) {
    result.steps.push_back(r.stats);
    if (r.stats.phase == Phase::kPrefill) {
      result.prefill_tokens += r.stats.n_tokens;
    } else {
      result.decode_tokens += r.sampled_tokens;
    }
  }
  result.prefill_seconds = phase_seconds(records, Phase::kPrefill);
  result.decode_seconds = phase_seconds(records, Phase::kDecode);
  if (gen.record_trace) result.trace = d.pipeline->take_trace();
  return result;
}

RequestId Engine::submit(Request request, RequestCallback on_event) {
  impl_->check_leader("submit()");
  return impl_->scheduler->submit(std::move(request), std::move(on_event));
}

bool Engine::cancel(RequestId id) {
  return impl_->scheduler->cancel(id);
}

bool Engine::step() {
  impl_->check_leader("step()");
  if (impl_->loop.joinable()) {
    fail(ErrorCode::kInvalidArgument,
         "step() while the engine serves in the background; the loop runs the steps");
  }
  return impl_->scheduler->run_once();
}

void Engine::Impl::serve_loop() {
  for (;;) {
    const bool stopping = stop_requested.load();
    if (stopping) {
      const auto deadline = Clock::time_point(std::chrono::nanoseconds(stop_deadline_ns.load()));
      if (scheduler->idle()) return;
      if (Clock::now() >= deadline) scheduler->cancel_all("the engine is stopping");
    }
    try {
      if (!scheduler->run_once() && !stopping) {
        scheduler->wait_for_work(std::chrono::milliseconds(100));
      }
    } catch (const Error& e) {
      spdlog::error("the scheduling loop failed: {}", e.what());
      scheduler->fail_all(e);
    } catch (const std::exception& e) {
      spdlog::error("the scheduling loop failed: {}", e.what());
      scheduler->fail_all(Error(ErrorCode::kInternal, e.what()));
    }
  }
}

void Engine::start_serving() {
  Impl& d = *impl_;
  d.check_leader("start_serving()");
  if (d.loop.joinable()) return;
  d.stop_requested = false;
  d.scheduler->start_accepting();
  d.loop = std::thread([&d] { d.serve_loop(); });
}

void Engine::Impl::stop_serving(std::chrono::milliseconds grace) {
  if (!scheduler) return;
  scheduler->stop_accepting();
  if (!loop.joinable()) return;
  stop_deadline_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                         (Clock::now() + grace).time_since_epoch())
                         .count();
  stop_requested = true;
  loop.join();
}

void Engine::stop_serving(std::chrono::milliseconds grace) {
  impl_->stop_serving(grace);
}

bool Engine::serving() const {
  return impl_->loop.joinable();
}

EngineMetrics Engine::metrics() const {
  return impl_->scheduler->metrics();
}

std::string_view to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStopToken:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      break;
  }
  return "error";
}

}  // namespace conveyor
