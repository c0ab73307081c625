// Engine: opens a model across pipeline stages and runs generate() as a sequence of validated
// step plans — one prefill step, then strictly one decode step at a time behind the KV commit
// barrier (spec: step dependency).
#include "conveyor/engine.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <utility>

#include "conveyor/checkpoint.hpp"
#include "conveyor/cost_model.hpp"
#include "conveyor/error.hpp"
#include "conveyor/partitioner.hpp"
#include "core/check.hpp"
#include "engine/engine_hooks.hpp"
#include "engine/stage_factory.hpp"
#include "model/weights.hpp"
#include "plan/plan_builders.hpp"
#include "runtime/pipeline.hpp"

namespace conveyor {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The chunk size a prefill step uses (0: none). Automatic chunking gives each of the n prompts
// about M/n chunks when there are fewer prompts than micro-batches.
int64_t prefill_chunk_tokens(const ScheduleOptions& options, int n_stages,
                             const std::vector<Request>& requests) {
  if (options.chunk_tokens != 0) return std::max<int64_t>(options.chunk_tokens, 0);
  const int64_t micro =
      options.prefill_micro_batches > 0 ? options.prefill_micro_batches : n_stages;
  const auto n = static_cast<int64_t>(requests.size());
  if (n >= micro) return 0;
  int64_t longest = 0;
  for (const Request& r : requests)
    longest = std::max<int64_t>(longest, r.prompt.size());
  const int64_t rounds = (micro + n - 1) / n;
  const int64_t chunk =
      std::max(ScheduleOptions::kMinAutoChunkTokens, (longest + rounds - 1) / rounds);
  return chunk >= longest ? 0 : chunk;
}

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
    if (report_) {
      const uint64_t done = std::min(inner_.bytes_read(), total_);
      report_(LoadProgress{.bytes_done = done,
                           .bytes_total = total_,
                           .seconds = seconds_since(start_),
                           .tensor = std::string(name)});
    }
    return values;
  }
  uint64_t bytes_read() const override { return inner_.bytes_read(); }

 private:
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
  const DType dtype = gpu ? options.device.dtype : DType::kF32;
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
}  // namespace

void EngineOptions::validate() const {
  if (n_stages < 0) {
    fail(ErrorCode::kInvalidArgument,
         "n_stages is {} but must be >= 1 (or 0: as the partition implies, one for \"even\")",
         n_stages);
  }
  if (device.threads_per_stage < 1) {
    fail(ErrorCode::kInvalidArgument, "device.threads_per_stage is {} but must be at least 1",
         device.threads_per_stage);
  }
  if (schedule.prefill_micro_batches < 0 || schedule.decode_micro_batches < 0) {
    fail(ErrorCode::kInvalidArgument,
         "micro-batch counts must be >= 0 (0 picks the default); got prefill {} and decode {}",
         schedule.prefill_micro_batches, schedule.decode_micro_batches);
  }
  if (schedule.chunk_tokens < -1) {
    fail(ErrorCode::kInvalidArgument,
         "chunk_tokens is {} but must be > 0 (a chunk size), 0 (automatic) or -1 (never chunk)",
         schedule.chunk_tokens);
  }
  if (capacity.max_batch < 1) {
    fail(ErrorCode::kInvalidArgument, "max_batch is {} but must be at least 1", capacity.max_batch);
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
  std::unique_ptr<Pipeline> pipeline;
  int64_t next_step = 0;
  // Per sequence slot: the tokens whose KV entries the slot holds committed (reuse_cache).
  std::vector<std::vector<int32_t>> cached;

  void check_requests(const std::vector<Request>& requests, const GenerateOptions& gen) const;
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

Engine Engine::open(const std::filesystem::path& model, const EngineOptions& options) {
  return open(model, options, nullptr);
}

Engine Engine::open(const std::filesystem::path& model, const EngineOptions& options,
                    const detail::EngineHooks* hooks) {
  const auto start = Clock::now();
  options.validate();
  const bool random_weights = options.random_weights_seed.has_value();
  if (random_weights && !std::filesystem::exists(model)) {
    fail(ErrorCode::kInvalidArgument,
         "model {} does not exist; with random weights pass a config.json file or a directory "
         "holding one",
         model.string());
  }
  // Random weights read only the config; otherwise the checkpoint (safetensors or GGUF) is
  // opened and validated as a whole before any stage loads.
  std::optional<Checkpoint> checkpoint;
  if (!random_weights) checkpoint = Checkpoint::open(model);
  ModelConfig config = checkpoint ? checkpoint->config : ModelConfig::load(model);
  const int64_t default_context = std::min<int64_t>(config.max_position_embeddings, 4096);
  const int64_t max_context =
      options.capacity.max_context > 0 ? options.capacity.max_context : default_context;
  if (max_context > config.max_position_embeddings) {
    fail(ErrorCode::kInvalidArgument,
         "max_context {} exceeds the model's max_position_embeddings {}; lower "
         "EngineOptions::capacity.max_context (--max-context)",
         max_context, config.max_position_embeddings);
  }
  if (config.sliding_window && max_context > *config.sliding_window) {
    fail(ErrorCode::kInvalidArgument,
         "max_context {} exceeds the model's sliding_window {}, and conveyor does not implement "
         "windowed attention; lower EngineOptions::capacity.max_context to at most {}",
         max_context, *config.sliding_window, *config.sliding_window);
  }
  const BackendKind backend = resolve_backend(options.device.backend);
  if (backend == BackendKind::kCpu) check_host_memory(config);
  Partition partition = make_partition(config, options, backend, max_context);
  auto impl = std::make_unique<Impl>(config, options, std::move(partition));
  impl->max_context = max_context;

  impl->backend = backend;
  const int n_stages = impl->partition.n_stages();
  std::vector<int> devices(static_cast<size_t>(n_stages), 0);
  if (impl->backend == BackendKind::kCuda) devices = stage_devices(options.device, n_stages);

  // Before any weights load: a transport that cannot work fails fast.
  auto make_link = make_links(impl->backend, config, options, devices, impl->max_context);
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
  for (int s = 0; s < impl->partition.n_stages(); ++s) {
    const LayerRange range = impl->partition.range(s);
    StageWeightsSpec spec{.first_layer = range.first,
                          .last_layer = range.last,
                          .embedding = impl->partition.has_embedding(s),
                          .head = impl->partition.has_head(s)};
    StageSource weights =
        random_weights ? StageSource(random_stage_draws(config, spec, *options.random_weights_seed))
                       : StageSource(load_stage_weights(*tensors, config, spec));
    if (const auto* host = std::get_if<StageWeights>(&weights)) {
      impl->load_stats.weight_bytes += static_cast<uint64_t>(host->bytes());
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
  impl->pipeline = std::make_unique<Pipeline>(
      std::move(stages),
      PipelineOptions{.link_timeout = std::chrono::milliseconds(options.link_timeout_ms),
                      .make_link = std::move(make_link)});
  impl->cached.resize(static_cast<size_t>(options.capacity.max_batch));
  impl->load_seconds = seconds_since(start);
  impl->load_stats.seconds = impl->load_seconds;
  if (tensors) impl->load_stats.bytes_read = tensors->bytes_read();
  spdlog::debug("opened {}{} in {:.2f}s: {} stages, partition {}", model.string(),
                random_weights ? " (random weights)" : "", impl->load_seconds,
                impl->partition.n_stages(), impl->partition.to_string());
  return Engine(std::move(impl));
}

void Engine::Impl::check_requests(const std::vector<Request>& requests,
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
  for (size_t r = 0; r < requests.size(); ++r) {
    const Request& req = requests[r];
    if (req.prompt.empty()) {
      fail(ErrorCode::kInvalidArgument,
           "request {} has an empty prompt; give at least one token id", r);
    }
    for (size_t i = 0; i < req.prompt.size(); ++i) {
      const int32_t id = req.prompt[i];
      if (id < 0 || id >= config.vocab_size) {
        fail(ErrorCode::kInvalidArgument,
             "request {}: token id {} at prompt position {} is outside the vocabulary [0, {})", r,
             id, i, config.vocab_size);
      }
    }
    if (req.max_new_tokens < 0) {
      fail(ErrorCode::kInvalidArgument, "request {}: max_new_tokens is {} but must be >= 0", r,
           req.max_new_tokens);
    }
    const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_new_tokens;
    if (total > max_context) {
      fail(ErrorCode::kInvalidArgument,
           "request {}: prompt of {} tokens + max_new_tokens {} = {} exceeds max_context {}; raise "
           "EngineOptions::capacity.max_context (--max-context) or shorten the request",
           r, req.prompt.size(), req.max_new_tokens, total, max_context);
    }
    for (int32_t id : req.stop_token_ids) {
      if (id < 0 || id >= config.vocab_size) {
        fail(ErrorCode::kInvalidArgument,
             "request {}: stop token id {} is outside the vocabulary [0, {})", r, id,
             config.vocab_size);
      }
    }
    req.sampling.validate();
  }
}

GenerateResult Engine::generate(const std::vector<Request>& requests, const GenerateOptions& gen) {
  Impl& d = *impl_;
  d.check_requests(requests, gen);
  d.pipeline->take_trace();  // drop events of an earlier failed call
  const size_t n = requests.size();

  // Sequence slot i serves request i for the whole call. With reuse_cache, slot i keeps the
  // KV entries of the longest prefix request i shares with what the slot computed last time
  // (always leaving at least the last prompt token to compute); every other slot starts empty.
  const auto slots = static_cast<size_t>(d.options.capacity.max_batch);
  std::vector<std::vector<int32_t>> tokens(slots);
  std::vector<SamplingParams> sampling(slots);
  std::vector<int64_t> reused(n, 0);
  const bool reuse = gen.reuse_cache && !gen.all_logits;
  for (size_t i = 0; i < slots; ++i) {
    int64_t keep = 0;
    if (reuse && i < n) {
      const std::vector<int32_t>& cached = d.cached[i];
      const std::vector<int32_t>& prompt = requests[i].prompt;
      const size_t limit = std::min(cached.size(), prompt.size() - 1);
      while (static_cast<size_t>(keep) < limit &&
             cached[static_cast<size_t>(keep)] == prompt[static_cast<size_t>(keep)]) {
        ++keep;
      }
      reused[i] = keep;
    }
    d.pipeline->truncate(static_cast<int32_t>(i), keep);
    d.cached[i].resize(static_cast<size_t>(keep));
  }
  for (size_t i = 0; i < n; ++i) {
    tokens[i] = requests[i].prompt;
    sampling[i] = requests[i].sampling;
  }
  StepContext ctx{.tokens = tokens,
                  .sampling = sampling,
                  .capture_logits = gen.return_logits,
                  .all_logits = gen.all_logits,
                  .record_trace = gen.record_trace};

  GenerateResult result;
  result.requests.resize(n);
  std::vector<bool> active(n);
  // Logits rows per request keyed by position, assembled at the end.
  std::vector<std::map<int64_t, std::vector<float>>> rows(n);

  auto finish_token = [&](size_t r, int32_t token) {
    const Request& req = requests[r];
    RequestResult& out = result.requests[r];
    out.tokens.push_back(token);
    tokens[r].push_back(token);
    const auto& eos = d.config.eos_token_ids;
    const bool stop = std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), token) !=
                          req.stop_token_ids.end() ||
                      (req.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end());
    const bool length = static_cast<int64_t>(out.tokens.size()) >= req.max_new_tokens;
    if (stop || length) {
      active[r] = false;
      out.finish = stop ? FinishReason::kStopToken : FinishReason::kLength;
    }
    if (gen.on_token) {
      gen.on_token(TokenEvent{.request = r,
                              .token = token,
                              .index = static_cast<int64_t>(out.tokens.size()) - 1,
                              .finished = !active[r]});
    }
  };

  auto run = [&](const StepPlan& plan) {
    const auto start = Clock::now();
    StepResult step = d.pipeline->run_step(plan, ctx);
    const double seconds = seconds_since(start);
    result.steps.push_back(StepStats{.step = plan.step,
                                     .phase = plan.phase,
                                     .n_seqs = static_cast<int64_t>(plan.seqs.size()),
                                     .n_tokens = plan.n_tokens(),
                                     .n_micro_batches = static_cast<int>(plan.micro_batches.size()),
                                     .seconds = seconds});
    for (LogitsRow& row : step.logits) {
      rows[static_cast<size_t>(row.seq)][row.position] = std::move(row.values);
    }
    return std::pair{std::move(step.tokens), seconds};
  };

  // Prefill: every prompt in one step, micro-batched (and chunked) across the stages.
  {
    std::vector<PrefillSeq> seqs;
    for (size_t r = 0; r < n; ++r) {
      seqs.push_back({static_cast<int32_t>(r), reused[r],
                      static_cast<int64_t>(requests[r].prompt.size()) - reused[r]});
      active[r] = requests[r].max_new_tokens > 0;
      result.requests[r].reused_tokens = reused[r];
    }
    const StepPlan plan = build_prefill_plan(
        d.next_step++, seqs,
        PrefillPlanOptions{.n_stages = d.partition.n_stages(),
                           .n_micro_batches = d.options.schedule.prefill_micro_batches,
                           .chunk_tokens = prefill_chunk_tokens(d.options.schedule,
                                                                d.partition.n_stages(), requests),
                           .sample_rule = gen.all_logits ? SampleRule::kEveryMicroBatch
                                                         : SampleRule::kWhereChunksSample});
    auto [sampled, seconds] = run(plan);
    result.prefill_tokens = plan.n_tokens();
    result.prefill_seconds = seconds;
    for (const SampledToken& t : sampled) {
      const size_t r = static_cast<size_t>(t.seq);
      if (active[r]) finish_token(r, t.token);
    }
  }

  // Decode: strictly one step at a time; step t+1 is planned only after step t committed.
  for (;;) {
    std::vector<SeqState> seqs;
    for (size_t r = 0; r < n; ++r) {
      if (active[r]) {
        seqs.push_back({static_cast<int32_t>(r), static_cast<int64_t>(tokens[r].size()) - 1});
      }
    }
    if (seqs.empty()) break;
    const StepPlan plan = build_decode_plan(
        d.next_step++, seqs,
        DecodePlanOptions{.n_stages = d.partition.n_stages(),
                          .n_micro_batches = d.options.schedule.decode_micro_batches});
    auto [sampled, seconds] = run(plan);
    result.decode_tokens += static_cast<int64_t>(sampled.size());
    result.decode_seconds += seconds;
    for (const SampledToken& t : sampled)
      finish_token(static_cast<size_t>(t.seq), t.token);
  }

  if (gen.return_logits) {
    const int64_t vocab = d.config.vocab_size;
    for (size_t r = 0; r < n; ++r) {
      RequestResult& out = result.requests[r];
      const int64_t prompt_len = static_cast<int64_t>(requests[r].prompt.size());
      // Rows that produced generated tokens: positions prompt_len - 1 onwards.
      const int64_t first = gen.all_logits ? 0 : prompt_len - 1;
      const int64_t last = prompt_len - 1 + static_cast<int64_t>(out.tokens.size());  // exclusive
      const int64_t end = gen.all_logits ? std::max(last, prompt_len) : last;
      for (int64_t p = first; p < end; ++p) {
        auto it = rows[r].find(p);
        CONVEYOR_ASSERT(it != rows[r].end());
        out.logits.insert(out.logits.end(), it->second.begin(), it->second.end());
        ++out.logits_rows;
      }
      CONVEYOR_ASSERT(static_cast<int64_t>(out.logits.size()) == out.logits_rows * vocab);
    }
  }
  // What each slot now holds in its KV cache, for the next call's reuse_cache.
  for (size_t i = 0; i < n; ++i) {
    const auto committed = static_cast<size_t>(d.pipeline->committed(0, static_cast<int32_t>(i)));
    d.cached[i].assign(tokens[i].begin(),
                       tokens[i].begin() + static_cast<std::ptrdiff_t>(committed));
  }
  if (gen.record_trace) result.trace = d.pipeline->take_trace();
  return result;
}

}  // namespace conveyor
