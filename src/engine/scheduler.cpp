// Scheduler: admission (bounded FIFO into KV slots), per-cohort step planning through the
// SchedulePolicy, outcomes (tokens, stops, logits, failures) and retirement of requests.
#include "engine/scheduler.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/check.hpp"

namespace conveyor {

using Clock = std::chrono::steady_clock;

struct Scheduler::Live {
  RequestId id = 0;
  Request request;
  RequestCallback on_event;
  RequestResult result;
  int32_t slot = 0;
  int32_t cohort = 0;
  int64_t committed = 0;    // KV positions committed (the engine's view of every stage)
  int64_t prompt_done = 0;  // prompt tokens in the KV cache
  bool in_flight = false;
  bool cancel = false;
  std::map<int64_t, std::vector<float>> rows;  // logits by position

  int64_t prompt_size() const { return static_cast<int64_t>(request.prompt.size()); }
  bool prefilling() const { return prompt_done < prompt_size(); }
};

namespace {

int cohorts_for(const SchedulePolicy& policy, int n_stages) {
  if (policy.decode_mode == DecodeMode::kStrict) return 1;
  return std::max(1, std::min(policy.cohorts > 0 ? policy.cohorts : n_stages, n_stages));
}

}  // namespace

Scheduler::Scheduler(Pipeline& pipeline, const ModelConfig& config, const SchedulerOptions& options)
    : pipeline_(pipeline),
      config_(config),
      options_(options),
      n_cohorts_(cohorts_for(options.policy, pipeline.n_stages())),
      opened_(Clock::now()) {
  const auto slots = static_cast<size_t>(options.slots);
  by_slot_.resize(slots);
  tokens_.resize(slots);
  sampling_.resize(slots);
  logits_.resize(slots, LogitsCapture::kNone);
  slot_committed_.resize(slots, 0);
  cohorts_.resize(static_cast<size_t>(n_cohorts_));
  counters_.kv_slots = options.slots;
}

Scheduler::~Scheduler() = default;

void Scheduler::check_request(const Request& req) const {
  if (req.prompt.empty()) {
    fail(ErrorCode::kInvalidArgument,
         "the request has an empty prompt; give at least one token id");
  }
  for (size_t i = 0; i < req.prompt.size(); ++i) {
    const int32_t id = req.prompt[i];
    if (id < 0 || id >= config_.vocab_size) {
      fail(ErrorCode::kInvalidArgument,
           "token id {} at prompt position {} is outside the vocabulary [0, {})", id, i,
           config_.vocab_size);
    }
  }
  if (req.max_new_tokens < 0) {
    fail(ErrorCode::kInvalidArgument, "max_new_tokens is {} but must be >= 0", req.max_new_tokens);
  }
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_new_tokens;
  if (total > options_.max_context) {
    fail(ErrorCode::kInvalidArgument,
         "prompt of {} tokens + max_new_tokens {} = {} exceeds max_context {}; raise "
         "EngineOptions::capacity.max_context (--max-context) or shorten the request",
         req.prompt.size(), req.max_new_tokens, total, options_.max_context);
  }
  for (int32_t id : req.stop_token_ids) {
    if (id < 0 || id >= config_.vocab_size) {
      fail(ErrorCode::kInvalidArgument, "stop token id {} is outside the vocabulary [0, {})", id,
           config_.vocab_size);
    }
  }
  req.sampling.validate();
}

RequestId Scheduler::submit(Request request, RequestCallback on_event, Admission admission) {
  check_request(request);
  if (admission.slot >= options_.slots) {
    fail(ErrorCode::kInvalidArgument, "slot {} is outside the engine's {} KV slots", admission.slot,
         options_.slots);
  }
  RequestId id;
  {
    std::lock_guard lock(inbox_mutex_);
    if (failure_) throw *failure_;
    if (!accepting_) {
      fail(ErrorCode::kCancelled, "the engine is stopping and takes no new requests");
    }
    // Requests beyond the free slots wait; past max_waiting of those, refuse.
    const auto free_slots =
        static_cast<int64_t>(options_.slots) - static_cast<int64_t>(live_ids_.size());
    const auto queued = static_cast<int64_t>(waiting_.size()) - free_slots;
    if (queued >= options_.max_waiting) {
      fail(ErrorCode::kOverloaded,
           "{} requests already wait for a KV slot (capacity.max_waiting = {}, all {} slots "
           "taken); retry later, or raise --max-waiting or --max-batch",
           queued, options_.max_waiting, options_.slots);
    }
    id = next_id_++;
    waiting_.push_back(Waiting{.id = id,
                               .request = std::move(request),
                               .on_event = std::move(on_event),
                               .admission = admission});
    counters_.requests_waiting = static_cast<int64_t>(waiting_.size());
  }
  inbox_changed_.notify_all();
  return id;
}

bool Scheduler::cancel(RequestId id) {
  {
    std::lock_guard lock(inbox_mutex_);
    const bool waiting =
        std::any_of(waiting_.begin(), waiting_.end(), [&](const Waiting& w) { return w.id == id; });
    if (!waiting && live_ids_.count(id) == 0) return false;
    cancels_.insert(id);
  }
  inbox_changed_.notify_all();
  return true;
}

void Scheduler::stop_accepting() {
  std::lock_guard lock(inbox_mutex_);
  accepting_ = false;
}

void Scheduler::start_accepting() {
  std::lock_guard lock(inbox_mutex_);
  accepting_ = true;
}

bool Scheduler::failed() const {
  std::lock_guard lock(inbox_mutex_);
  return failure_.has_value();
}

void Scheduler::end_waiting(Waiting& w, FinishReason reason, const Error& error) {
  RequestResult result{.id = w.id,
                       .prompt_tokens = static_cast<int64_t>(w.request.prompt.size()),
                       .finish = reason,
                       .error = error.what(),
                       .error_code = error.code()};
  if (w.on_event) w.on_event(RequestEvent{.id = w.id, .finished = true, .result = &result});
}

void Scheduler::cancel_all(const std::string& reason) {
  {
    std::lock_guard lock(inbox_mutex_);
    for (const Waiting& w : waiting_)
      cancels_.insert(w.id);
    for (RequestId id : live_ids_)
      cancels_.insert(id);
  }
  spdlog::debug("cancelling every request: {}", reason);
  inbox_changed_.notify_all();
}

void Scheduler::wait_for_work(std::chrono::milliseconds timeout) {
  std::unique_lock lock(inbox_mutex_);
  inbox_changed_.wait_for(lock, timeout, [&] { return !waiting_.empty() || !cancels_.empty(); });
}

bool Scheduler::idle() const {
  std::lock_guard lock(inbox_mutex_);
  return waiting_.empty() && live_ids_.empty() && in_flight_.empty();
}

// Applies cancellations: waiting requests end now; running ones at their next step boundary.
void Scheduler::take_inbox() {
  std::vector<Waiting> dropped;
  std::set<RequestId> cancels;
  {
    std::lock_guard lock(inbox_mutex_);
    cancels.swap(cancels_);
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      if (cancels.count(it->id) != 0) {
        dropped.push_back(std::move(*it));
        it = waiting_.erase(it);
      } else {
        ++it;
      }
    }
    counters_.requests_waiting = static_cast<int64_t>(waiting_.size());
    counters_.requests_cancelled += static_cast<int64_t>(dropped.size());
  }
  const Error why(ErrorCode::kCancelled, "cancelled while waiting for a KV slot");
  for (Waiting& w : dropped)
    end_waiting(w, FinishReason::kCancelled, why);
  for (auto& live : by_slot_) {
    if (live && cancels.count(live->id) != 0) live->cancel = true;
  }
  for (auto& live : by_slot_) {
    if (live && live->cancel && !live->in_flight) {
      const Error why(ErrorCode::kCancelled, "cancelled");
      finish(*live, FinishReason::kCancelled, &why);
    }
  }
}

int32_t Scheduler::free_slot(const Waiting& w) const {
  if (w.admission.slot >= 0) {
    return by_slot_[static_cast<size_t>(w.admission.slot)] ? -1 : w.admission.slot;
  }
  for (size_t s = 0; s < by_slot_.size(); ++s) {
    if (!by_slot_[s]) return static_cast<int32_t>(s);
  }
  return -1;
}

void Scheduler::admit() {
  for (;;) {
    Waiting next;
    int32_t slot = -1;
    {
      std::lock_guard lock(inbox_mutex_);
      if (waiting_.empty()) return;
      slot = free_slot(waiting_.front());
      if (slot < 0) return;  // first come, first served: the head waits for its slot
      next = std::move(waiting_.front());
      waiting_.pop_front();
      live_ids_.insert(next.id);
      counters_.requests_waiting = static_cast<int64_t>(waiting_.size());
      counters_.requests_running = static_cast<int64_t>(live_ids_.size());
      counters_.kv_slots_used = static_cast<int32_t>(live_ids_.size());
    }
    try {
      install(next, slot);
    } catch (const Error& e) {
      // The slot could not be prepared (the pipeline broke): the request ends here.
      {
        std::lock_guard lock(inbox_mutex_);
        live_ids_.erase(next.id);
        ++counters_.requests_failed;
        counters_.requests_running = static_cast<int64_t>(live_ids_.size());
        counters_.kv_slots_used = static_cast<int32_t>(live_ids_.size());
      }
      end_waiting(next, FinishReason::kError, e);
      throw;
    }
  }
}

void Scheduler::install(Waiting& w, int32_t slot) {
  const auto s = static_cast<size_t>(slot);
  // Reuse the slot's committed prefix the prompt shares, always computing the prompt's last
  // token (its logits give the first generated token).
  int64_t keep = 0;
  if (w.admission.reuse_prefix) {
    const std::vector<int32_t>& cached = tokens_[s];
    const auto limit = std::min<int64_t>({slot_committed_[s], static_cast<int64_t>(cached.size()),
                                          static_cast<int64_t>(w.request.prompt.size()) - 1});
    while (keep < limit &&
           cached[static_cast<size_t>(keep)] == w.request.prompt[static_cast<size_t>(keep)]) {
      ++keep;
    }
  }
  pipeline_.release(slot);
  pipeline_.truncate(slot, keep);
  // Nothing is taken from `w` before here: a failure above leaves it whole for its caller.
  auto live = std::make_unique<Live>();
  live->id = w.id;
  live->on_event = std::move(w.on_event);
  live->slot = slot;
  tokens_[s] = w.request.prompt;
  sampling_[s] = w.request.sampling;
  logits_[s] = w.request.logits;
  live->committed = keep;
  live->prompt_done = keep;
  live->result.id = w.id;
  live->result.prompt_tokens = static_cast<int64_t>(w.request.prompt.size());
  live->result.reused_tokens = keep;
  live->request = std::move(w.request);
  std::vector<int64_t> sizes;
  for (const Cohort& c : cohorts_)
    sizes.push_back(static_cast<int64_t>(c.slots.size()));
  live->cohort = pick_cohort(sizes);
  cohorts_[static_cast<size_t>(live->cohort)].slots.push_back(slot);
  by_slot_[s] = std::move(live);
}

void Scheduler::submit_steps() {
  const StepContext ctx{
      .tokens = tokens_, .sampling = sampling_, .logits = logits_, .record_trace = record_trace_};
  for (size_t c = 0; c < cohorts_.size(); ++c) {
    Cohort& cohort = cohorts_[c];
    if (cohort.in_flight || cohort.slots.empty()) continue;
    std::vector<SeqState> decoding;
    std::vector<PromptProgress> prompts;
    bool all_rows = false;
    for (int32_t slot : cohort.slots) {
      const Live& live = *by_slot_[static_cast<size_t>(slot)];
      if (live.prefilling()) {
        prompts.push_back({slot, live.prompt_done, live.prompt_size()});
        all_rows = all_rows || live.request.logits == LogitsCapture::kAll;
      } else {
        decoding.push_back({slot, live.committed});
      }
    }
    std::vector<SeqWork> work = step_work(options_.policy, decoding, prompts);
    if (work.empty()) continue;
    StepPlan plan =
        plan_step(options_.policy, pipeline_.n_stages(), next_step_++, work,
                  all_rows ? LogitsRows::kAll : LogitsRows::kSampled, static_cast<int32_t>(c));
    InFlight f{.cohort = static_cast<int32_t>(c),
               .work = std::move(work),
               .stats = StepStats{.step = plan.step,
                                  .phase = plan.phase,
                                  .cohort = plan.cohort,
                                  .n_seqs = static_cast<int64_t>(plan.seqs.size()),
                                  .n_tokens = plan.n_tokens(),
                                  .n_micro_batches = static_cast<int>(plan.micro_batches.size())},
               .start = Clock::now()};
    uint64_t ticket = 0;
    try {
      ticket = pipeline_.submit(std::move(plan), ctx);
    } catch (const Error& e) {
      if (pipeline_.broken()) throw;
      // The step could not start (links that cannot be reset): it ends its requests as a failed
      // step does; nothing of it was queued.
      spdlog::warn("step {} could not start: {}", f.stats.step, e.what());
      for (const SeqWork& w : f.work) {
        if (auto& live = by_slot_[static_cast<size_t>(w.seq)]) {
          finish(*live, FinishReason::kError, &e);
        }
      }
      continue;
    }
    for (const SeqWork& w : f.work)
      by_slot_[static_cast<size_t>(w.seq)]->in_flight = true;
    cohort.in_flight = true;
    in_flight_.emplace(ticket, std::move(f));
  }
}

bool Scheduler::run_once() {
  if (failed()) return false;
  take_inbox();
  admit();
  submit_steps();
  if (pipeline_.in_flight() == 0) return false;
  complete(pipeline_.wait_any());
  return true;
}

void Scheduler::deliver_token(Live& live, int32_t token) {
  RequestResult& out = live.result;
  out.tokens.push_back(token);
  tokens_[static_cast<size_t>(live.slot)].push_back(token);
  {
    std::lock_guard lock(inbox_mutex_);
    ++counters_.generated_tokens;
  }
  const Request& req = live.request;
  const auto& eos = config_.eos_token_ids;
  const bool stop = std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), token) !=
                        req.stop_token_ids.end() ||
                    (req.stop_at_eos && std::find(eos.begin(), eos.end(), token) != eos.end());
  const bool length = static_cast<int64_t>(out.tokens.size()) >= req.max_new_tokens;
  if (stop || length || live.cancel) {
    const Error why(ErrorCode::kCancelled, "cancelled");
    finish(live,
           stop     ? FinishReason::kStopToken
           : length ? FinishReason::kLength
                    : FinishReason::kCancelled,
           stop || length ? nullptr : &why, token);
    return;
  }
  if (live.on_event) {
    live.on_event(RequestEvent{
        .id = live.id, .token = token, .index = static_cast<int64_t>(out.tokens.size()) - 1});
  }
}

void Scheduler::complete(StepOutcome outcome) {
  auto node = in_flight_.extract(outcome.ticket);
  CONVEYOR_ASSERT(!node.empty());
  InFlight& f = node.mapped();
  Cohort& cohort = cohorts_[static_cast<size_t>(f.cohort)];
  cohort.in_flight = false;
  for (const SeqWork& w : f.work)
    by_slot_[static_cast<size_t>(w.seq)]->in_flight = false;
  StepRecord record{.stats = f.stats, .start = f.start, .end = Clock::now()};
  record.stats.seconds = std::chrono::duration<double>(record.end - record.start).count();
  {
    std::lock_guard lock(inbox_mutex_);
    ++counters_.steps;
  }

  if (outcome.error) {
    records_.push_back(record);
    if (outcome.collateral && !cohort.retried) {
      // Another step's link failure cancelled this one; its KV is back at its last commit and
      // the same work is planned again next round.
      cohort.retried = true;
      return;
    }
    cohort.retried = false;
    Error error(ErrorCode::kInternal, "step failed");
    try {
      std::rethrow_exception(outcome.error);
    } catch (const Error& e) {
      error = e;
    } catch (const std::exception& e) {
      error = Error(ErrorCode::kInternal, e.what());
    }
    spdlog::warn("step {} failed: {}", outcome.step, error.what());
    for (const SeqWork& w : f.work) {
      if (auto& live = by_slot_[static_cast<size_t>(w.seq)]) {
        finish(*live, FinishReason::kError, &error);
      }
    }
    return;
  }
  cohort.retried = false;
  for (const SeqWork& w : f.work) {
    Live& live = *by_slot_[static_cast<size_t>(w.seq)];
    live.committed += w.n_tokens;
    if (w.prompt) {
      live.prompt_done += w.n_tokens;
      std::lock_guard lock(inbox_mutex_);
      counters_.prompt_tokens += w.n_tokens;
    }
  }
  for (LogitsRow& row : outcome.result.logits) {
    by_slot_[static_cast<size_t>(row.seq)]->rows[row.position] = std::move(row.values);
  }
  record.sampled_tokens = static_cast<int64_t>(outcome.result.tokens.size());
  records_.push_back(record);
  for (const SampledToken& t : outcome.result.tokens) {
    auto& live = by_slot_[static_cast<size_t>(t.seq)];
    if (!live) continue;
    if (live->request.max_new_tokens == 0) {
      finish(*live, FinishReason::kLength);  // prefill only: the sampled token is not wanted
    } else {
      deliver_token(*live, t.token);
    }
  }
  // Requests cancelled while their step ran end now.
  for (const SeqWork& w : f.work) {
    auto& live = by_slot_[static_cast<size_t>(w.seq)];
    if (live && live->cancel) {
      const Error why(ErrorCode::kCancelled, "cancelled");
      finish(*live, FinishReason::kCancelled, &why);
    }
  }
}

void Scheduler::finish(Live& live, FinishReason reason, const Error* error,
                       std::optional<int32_t> token) {
  RequestResult& out = live.result;
  out.finish = reason;
  if (error != nullptr) {
    out.error = error->what();
    out.error_code = error->code();
  }
  if (live.request.logits != LogitsCapture::kNone && reason != FinishReason::kError) {
    // Rows that produced generated tokens: positions prompt - 1 onwards; with kAll, every
    // prompt position first.
    const int64_t prompt = live.prompt_size();
    const bool all = live.request.logits == LogitsCapture::kAll;
    const int64_t first = all ? 0 : prompt - 1;
    const int64_t last = prompt - 1 + static_cast<int64_t>(out.tokens.size());  // exclusive
    const int64_t end = all ? std::max(last, prompt) : last;
    for (int64_t p = first; p < end; ++p) {
      auto it = live.rows.find(p);
      if (it == live.rows.end()) break;  // cancelled before this row was computed
      out.logits.insert(out.logits.end(), it->second.begin(), it->second.end());
      ++out.logits_rows;
    }
  }
  const auto slot = static_cast<size_t>(live.slot);
  Cohort& cohort = cohorts_[static_cast<size_t>(live.cohort)];
  cohort.slots.erase(std::find(cohort.slots.begin(), cohort.slots.end(), live.slot));
  // The slot keeps its committed tokens for a successor that shares the prefix — unless a stage
  // may still be reading them (a request ended by a broken pipeline mid-step).
  if (!live.in_flight) {
    tokens_[slot].resize(static_cast<size_t>(live.committed));
    slot_committed_[slot] = live.committed;
  } else {
    slot_committed_[slot] = 0;
  }
  {
    std::lock_guard lock(inbox_mutex_);
    live_ids_.erase(live.id);
    counters_.requests_running = static_cast<int64_t>(live_ids_.size());
    counters_.kv_slots_used = static_cast<int32_t>(live_ids_.size());
    ++(reason == FinishReason::kCancelled ? counters_.requests_cancelled
       : reason == FinishReason::kError   ? counters_.requests_failed
                                          : counters_.requests_finished);
  }
  std::unique_ptr<Live> owned = std::move(by_slot_[slot]);
  if (owned->on_event) {
    owned->on_event(RequestEvent{.id = owned->id,
                                 .token = token,
                                 .index = static_cast<int64_t>(out.tokens.size()) - 1,
                                 .finished = true,
                                 .result = &owned->result});
  }
}

void Scheduler::fail_all(const Error& error) {
  std::deque<Waiting> waiting;
  {
    std::lock_guard lock(inbox_mutex_);
    if (!failure_) failure_ = error;
    waiting.swap(waiting_);
    cancels_.clear();
    counters_.requests_waiting = 0;
    counters_.requests_failed += static_cast<int64_t>(waiting.size());
  }
  // Steps still in flight are taken first where the pipeline can report them, so that no stage
  // reads a request's tokens after it ended.
  while (!pipeline_.broken() && pipeline_.in_flight() > 0) {
    try {
      pipeline_.wait_any();
    } catch (const Error&) {
      break;
    }
  }
  in_flight_.clear();
  for (Cohort& c : cohorts_)
    c.in_flight = false;
  for (auto& live : by_slot_) {
    if (live) finish(*live, FinishReason::kError, &error);
  }
  for (Waiting& w : waiting)
    end_waiting(w, FinishReason::kError, error);
  inbox_changed_.notify_all();
}

std::vector<StepRecord> Scheduler::take_step_records() {
  return std::exchange(records_, {});
}

EngineMetrics Scheduler::metrics() const {
  EngineMetrics m;
  {
    std::lock_guard lock(inbox_mutex_);
    m = counters_;
  }
  m.stage_busy_seconds = pipeline_.busy_seconds();
  m.seconds = std::chrono::duration<double>(Clock::now() - opened_).count();
  return m;
}

}  // namespace conveyor
