// Pipeline: stage worker threads with FIFO job queues (programs, commits, rollbacks, slot
// truncations), per-step failure handling that keeps the links in order, and the commit barrier
// of each step in flight.
#include "runtime/pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <new>
#include <unordered_map>

#include "core/check.hpp"

namespace conveyor {

using Clock = std::chrono::steady_clock;

struct Pipeline::Flight {
  uint64_t ticket = 0;
  StepPlan plan;
  StepContext ctx;
  std::vector<int32_t> seqs;
  Clock::time_point submitted;
  // Written by each stage's worker for its own stage only.
  struct StageError {
    std::exception_ptr error;
    ErrorCode code = ErrorCode::kInternal;
    Clock::time_point time;
  };
  std::vector<StageError> errors;
  std::vector<Trace> traces;
  StepResult result;  // the last stage's
  // Guarded by Pipeline::mutex_.
  int stages_done = 0;
  double seconds = 0.0;
  bool cancelled = false;      // the links were cancelled while it was in flight
  bool caused_cancel = false;  // ... by a link failure in this step
};

struct Pipeline::Job {
  enum class Kind { kProgram, kCommit, kRollback, kTruncate };
  Kind kind = Kind::kProgram;
  std::shared_ptr<Flight> flight;  // kProgram, kCommit, kRollback
  int32_t seq = -1;                // kTruncate
  int64_t length = 0;
};

struct Pipeline::Worker {
  int stage = 0;
  std::unique_ptr<StageBackend> backend;
  std::thread thread;
  std::deque<Job> jobs;             // guarded by Pipeline::mutex_
  bool busy = false;                // guarded by Pipeline::mutex_
  std::atomic<int64_t> busy_ns{0};  // Compute and Sample time
};

Pipeline::Pipeline(std::vector<std::unique_ptr<StageBackend>> stages,
                   const PipelineOptions& options)
    : options_(options),
      n_stages_(options.n_stages > 0 ? options.n_stages : static_cast<int>(stages.size())),
      first_stage_(options.first_stage),
      epoch_(Clock::now()) {
  if (stages.empty()) fail(ErrorCode::kInvalidArgument, "a pipeline needs at least one stage");
  const int n_local = static_cast<int>(stages.size());
  if (first_stage_ < 0 || first_stage_ + n_local > n_stages_) {
    fail(ErrorCode::kInvalidArgument,
         "this process' stages [{}, {}) do not fit a pipeline of {} stages", first_stage_,
         first_stage_ + n_local, n_stages_);
  }
  const bool spans = n_local < n_stages_;
  if (spans && !(first_stage_ == 0 ? options_.remote != nullptr : bool(options_.on_local_done))) {
    fail(ErrorCode::kInvalidArgument,
         "a pipeline of {} stages runs {} here: the process with stage 0 needs the remote "
         "stages, every other one a report callback",
         n_stages_, n_local);
  }
  // This process' links: between its stages, and into and out of them.
  links_.resize(static_cast<size_t>(n_stages_ - 1));
  const int last_link = std::min(first_stage_ + n_local, n_stages_ - 1);
  for (int s = std::max(first_stage_ - 1, 0); s < last_link; ++s) {
    links_[static_cast<size_t>(s)] = options.make_link
                                         ? options.make_link(s)
                                         : std::make_unique<HostLink>(options.link_capacity);
  }
  remote_busy_ns_.assign(static_cast<size_t>(n_stages_), 0);
  for (int i = 0; i < n_local; ++i) {
    auto worker = std::make_unique<Worker>();
    worker->stage = first_stage_ + i;
    worker->backend = std::move(stages[static_cast<size_t>(i)]);
    workers_.push_back(std::move(worker));
  }
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->thread = std::thread([this, w] { worker_loop(*w); });
  }
  if (options_.remote) {
    options_.remote->start([this](StepReport&& report) { on_report(std::move(report)); },
                           [this](std::exception_ptr error) { on_remote_failure(error); });
  }
}

Pipeline::~Pipeline() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cancel_each_link();  // wakes a worker blocked on a link
  work_ready_.notify_all();
  for (auto& worker : workers_) {
    if (worker->thread.joinable()) worker->thread.join();
  }
  if (options_.remote) options_.remote->stop();
}

void Pipeline::worker_loop(Worker& worker) {
  for (;;) {
    Job job;
    {
      std::unique_lock lock(mutex_);
      work_ready_.wait(lock, [&] { return stopping_ || !worker.jobs.empty(); });
      if (stopping_) return;
      job = std::move(worker.jobs.front());
      worker.jobs.pop_front();
      worker.busy = true;
    }
    std::exception_ptr broken;
    try {
      switch (job.kind) {
        case Job::Kind::kProgram:
          run_program(worker, *job.flight);
          break;
        case Job::Kind::kCommit:
          worker.backend->commit(job.flight->plan.step, job.flight->seqs);
          break;
        case Job::Kind::kRollback:
          worker.backend->rollback(job.flight->seqs);
          break;
        case Job::Kind::kTruncate:
          worker.backend->truncate(job.seq, job.length);
          break;
      }
    } catch (const std::exception& e) {
      // The step's outcome was already decided; a stage that cannot apply it leaves its KV
      // cache out of step with the others, so the pipeline stops taking work.
      broken = std::make_exception_ptr(Error(
          ErrorCode::kInternal,
          fmt::format("stage {} could not run a {} ({}); the pipeline is unusable", worker.stage,
                      job.kind == Job::Kind::kProgram    ? "step program"
                      : job.kind == Job::Kind::kCommit   ? "commit"
                      : job.kind == Job::Kind::kRollback ? "rollback"
                                                         : "slot truncation",
                      e.what())));
    }
    std::optional<StepReport> report;
    {
      std::lock_guard lock(mutex_);
      worker.busy = false;
      if (broken && !broken_) broken_ = broken;
      if (job.kind == Job::Kind::kProgram) {
        Flight& f = *job.flight;
        if (++f.stages_done == n_stages()) {
          f.seconds = std::chrono::duration<double>(Clock::now() - f.submitted).count();
          completed_.push_back(job.flight);
        } else if (options_.on_local_done && f.stages_done == local_stages()) {
          report = local_report(f);
        }
      }
    }
    progress_.notify_all();
    // A follower: the leader decides the step once every process reported it.
    if (report) options_.on_local_done(std::move(*report));
  }
}

void Pipeline::abort_all(Flight& cause) {
  // Across processes the others cancel too, told before anything here can see the
  // cancellation (so before any later step's messages): they then drain their links in step.
  if (options_.remote) options_.remote->cancel_links();
  {
    std::lock_guard lock(mutex_);
    if (!links_cancelled_) cause.caused_cancel = true;
    cancel_flights();
  }
  cancel_each_link();
}

void Pipeline::cancel_each_link() {
  for (auto& link : links_) {
    if (link) link->cancel();
  }
}

void Pipeline::cancel_flights() {
  links_cancelled_ = true;
  for (auto& f : flights_) {
    if (f->stages_done < expected_done()) f->cancelled = true;
  }
}

void Pipeline::cancel_links() {
  {
    std::lock_guard lock(mutex_);
    cancel_flights();
  }
  cancel_each_link();
}

void Pipeline::run_program(Worker& worker, Flight& flight) {
  const int s = worker.stage;
  const bool first = s == 0;
  const bool last = s == n_stages() - 1;
  const StepPlan& plan = flight.plan;
  const StepContext& ctx = flight.ctx;
  Flight::StageError& error = flight.errors[static_cast<size_t>(s)];
  auto record = [&](std::exception_ptr e, ErrorCode code) {
    if (!error.error) error = {std::move(e), code, Clock::now()};
  };
  {
    std::lock_guard lock(mutex_);
    if (flight.cancelled) {
      record(std::make_exception_ptr(Error(
                 ErrorCode::kAborted,
                 fmt::format("step {} was cancelled before stage {} started it: a link failed "
                             "in another step",
                             plan.step, s))),
             ErrorCode::kAborted);
      return;
    }
  }
  std::unordered_map<int32_t, const MicroBatch*> by_id;
  for (const MicroBatch& mb : plan.micro_batches)
    by_id[mb.id] = &mb;
  std::unordered_map<int32_t, Activations> activations;  // micro-batches held here
  // After a failure of this step here or upstream, the stage still receives what it was sent and
  // sends stand-ins for what it owes, so the links stay in order for the steps behind this one.
  bool poisoned = false;

  const std::vector<Instruction>& program = plan.programs[static_cast<size_t>(s)];
  for (size_t i = 0; i < program.size(); ++i) {
    const Instruction& ins = program[i];
    const auto start = Clock::now();
    // Validated plans name only their own micro-batches.
    const MicroBatch* mb = ins.kind == OpKind::kCommit ? nullptr : by_id[ins.micro_batch];
    try {
      switch (ins.kind) {
        case OpKind::kRecv: {
          CONVEYOR_ASSERT(!first);
          LinkMessage message = links_[static_cast<size_t>(s - 1)]->recv(options_.link_timeout);
          if (message.micro_batch != ins.micro_batch || message.step != plan.step) {
            fail(ErrorCode::kCommunication,
                 "communication order: expected micro-batch {} of step {} but the link delivered "
                 "micro-batch {} of step {}",
                 ins.micro_batch, plan.step, message.micro_batch, message.step);
          }
          if (message.aborted) {
            if (!poisoned) {
              record(std::make_exception_ptr(
                         Error(ErrorCode::kAborted,
                               fmt::format("stage {} stopped step {} at micro-batch {}: stage {} "
                                           "failed earlier in the step",
                                           s, plan.step, ins.micro_batch, s - 1))),
                     ErrorCode::kAborted);
              poisoned = true;
            }
          } else if (!poisoned) {
            activations[ins.micro_batch] = std::move(message.activations);
          }
          break;
        }
        case OpKind::kCompute:
          if (!poisoned) worker.backend->compute(*mb, ctx, activations[ins.micro_batch]);
          break;
        case OpKind::kSend: {
          CONVEYOR_ASSERT(!last);
          LinkMessage message{.micro_batch = ins.micro_batch, .step = plan.step};
          if (poisoned) {
            message.aborted = true;
          } else {
            auto node = activations.extract(ins.micro_batch);
            CONVEYOR_ASSERT(!node.empty());
            message.activations = std::move(node.mapped());
          }
          links_[static_cast<size_t>(s)]->send(std::move(message), options_.link_timeout);
          break;
        }
        case OpKind::kSample: {
          CONVEYOR_ASSERT(last);
          if (poisoned) break;
          auto node = activations.extract(ins.micro_batch);
          CONVEYOR_ASSERT(!node.empty());
          // The token return path: samples go back to the scheduler (stage 0's side).
          worker.backend->sample(*mb, ctx, node.mapped(), flight.result.tokens,
                                 flight.result.logits);
          break;
        }
        case OpKind::kCommit:
          // The commit itself is queued once every stage got here (the barrier).
          break;
      }
    } catch (const std::exception& e) {
      // Name the stage and instruction, whatever the cause (a backend may also throw std::).
      const Error* err = dynamic_cast<const Error*>(&e);
      const ErrorCode code = err                                       ? err->code()
                             : dynamic_cast<const std::bad_alloc*>(&e) ? ErrorCode::kOutOfMemory
                                                                       : ErrorCode::kInternal;
      const std::string where =
          ins.kind == OpKind::kCommit
              ? std::string("commit")
              : fmt::format("{} of micro-batch {}", to_string(ins.kind), ins.micro_batch);
      record(std::make_exception_ptr(Error(
                 code, fmt::format("stage {} failed at instruction {} ({}) of step {} ({}): {}", s,
                                   i, where, plan.step, to_string(plan.phase), e.what()))),
             code);
      if (ins.kind == OpKind::kRecv || ins.kind == OpKind::kSend) {
        // A link in an unknown state: no stand-in can keep it in order. Stop everything.
        abort_all(flight);
        return;
      }
      poisoned = true;
    }
    if (ins.kind == OpKind::kCompute || ins.kind == OpKind::kSample) {
      worker.busy_ns +=
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
    }
    if (ctx.record_trace) {
      const auto end = Clock::now();
      using us = std::chrono::duration<double, std::micro>;
      flight.traces[static_cast<size_t>(s)].push_back(TraceEvent{
          .stage = s,
          .kind = ins.kind,
          .micro_batch = ins.micro_batch,
          .step = plan.step,
          .phase = plan.phase,
          .n_tokens = mb ? mb->n_tokens() : 0,
          .start_us = us(start - epoch_).count(),
          .end_us = us(end - epoch_).count(),
      });
    }
  }
}

void Pipeline::enqueue_all(const std::function<Job()>& make) {
  for (auto& worker : workers_)
    worker->jobs.push_back(make());
  work_ready_.notify_all();
}

std::exception_ptr Pipeline::broken() const {
  std::lock_guard lock(mutex_);
  return broken_;
}

void Pipeline::check_healthy() const {
  std::lock_guard lock(mutex_);
  if (broken_) std::rethrow_exception(broken_);
}

uint64_t Pipeline::submit(StepPlan plan, const StepContext& ctx) {
  check_healthy();
  if (plan.n_stages != n_stages()) {
    fail(ErrorCode::kInvalidArgument, "plan is for {} stages but the pipeline has {}",
         plan.n_stages, n_stages());
  }
  validate(plan, ValidateOptions{.link_capacity = options_.link_capacity});
  {
    // After a link failure whose links could not be reset yet: try again now, and refuse the
    // step (nothing queued) while they stay broken.
    // (A follower resets when the leader says so: only it knows that nothing runs anywhere.)
    std::lock_guard lock(mutex_);
    if (links_cancelled_ && !running() && !options_.on_local_done) {
      if (std::exception_ptr error = reset_links()) std::rethrow_exception(error);
    }
  }
  checker_.submit(plan);  // throws before anything is queued

  auto flight = std::make_shared<Flight>();
  flight->ticket = next_ticket_++;
  for (const SeqState& s : plan.seqs)
    flight->seqs.push_back(s.seq);
  flight->plan = std::move(plan);
  flight->ctx = ctx;
  flight->submitted = Clock::now();
  flight->errors.resize(static_cast<size_t>(n_stages_));
  flight->traces.resize(static_cast<size_t>(n_stages_));
  // The other processes have the step before any stage here can start it (and fail it).
  if (options_.remote) options_.remote->submit(flight->ticket, flight->plan, flight->ctx);
  {
    std::lock_guard lock(mutex_);
    flight->cancelled = links_cancelled_;  // behind a failure not yet cleaned up: collateral
    flights_.push_back(flight);
    enqueue_all([&] { return Job{.kind = Job::Kind::kProgram, .flight = flight}; });
  }
  return flight->ticket;
}

StepOutcome Pipeline::wait_any() {
  std::unique_lock lock(mutex_);
  if (flights_.empty()) {
    fail(ErrorCode::kInvalidArgument, "wait_any: no step is in flight; submit one first");
  }
  // After a link failure, outcomes wait until every step in flight has stopped and the links
  // are reset, so that the next submission finds them in order.
  progress_.wait(
      lock, [&] { return broken_ || (!completed_.empty() && !(links_cancelled_ && running())); });
  if (broken_) std::rethrow_exception(broken_);
  // A reset that fails leaves the links cancelled; the next submit tries again and reports it.
  if (links_cancelled_) reset_links();
  std::shared_ptr<Flight> f = std::move(completed_.front());
  completed_.pop_front();
  flights_.erase(std::find(flights_.begin(), flights_.end(), f));

  StepOutcome out{
      .ticket = f->ticket, .step = f->plan.step, .cohort = f->plan.cohort, .seconds = f->seconds};
  // The root cause is the earliest failure that is not a consequence of another one.
  const Flight::StageError* cause = nullptr;
  for (const Flight::StageError& e : f->errors) {
    if (!e.error) continue;
    auto rank = [](const Flight::StageError& x) { return x.code == ErrorCode::kAborted ? 1 : 0; };
    if (!cause || rank(e) < rank(*cause) || (rank(e) == rank(*cause) && e.time < cause->time)) {
      cause = &e;
    }
  }
  out.error = cause ? cause->error : nullptr;
  out.collateral = out.error && f->cancelled && !f->caused_cancel;
  if (out.error) {
    enqueue_all([&] { return Job{.kind = Job::Kind::kRollback, .flight = f}; });
  } else {
    out.result = std::move(f->result);
    enqueue_all([&] { return Job{.kind = Job::Kind::kCommit, .flight = f}; });
  }
  for (Trace& t : f->traces)
    trace_.insert(trace_.end(), t.begin(), t.end());
  lock.unlock();
  // The commit barrier across processes: the others apply the same decision. This thread alone
  // queues jobs, so they see it in the order of the jobs queued here.
  if (options_.remote) options_.remote->decide(f->ticket, !out.error);
  checker_.complete(out.step, !out.error);
  return out;
}

int Pipeline::expected_done() const {
  // A follower's steps are done here once its own stages finished them.
  return options_.on_local_done ? local_stages() : n_stages_;
}

bool Pipeline::running() const {
  for (const auto& f : flights_) {
    if (f->stages_done < expected_done()) return true;
  }
  return false;
}

std::exception_ptr Pipeline::reset_links() {
  std::exception_ptr error;
  for (auto& link : links_) {
    if (!link) continue;
    try {
      link->reset();
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  if (!error) links_cancelled_ = false;
  // The others drain their links the same way (they receive this before any later step).
  if (options_.remote) options_.remote->reset_links();
  return error;
}

void Pipeline::reset_cancelled_links() {
  std::lock_guard lock(mutex_);
  if (std::exception_ptr error = reset_links()) {
    if (!broken_) broken_ = error;
    std::rethrow_exception(error);
  }
}

StepResult Pipeline::run_step(const StepPlan& plan, const StepContext& ctx) {
  if (in_flight() != 0) {
    fail(ErrorCode::kInvalidArgument,
         "run_step needs an idle pipeline but {} step(s) are in flight; use submit and wait_any",
         in_flight());
  }
  submit(plan, ctx);
  StepOutcome outcome = wait_any();
  if (outcome.error) std::rethrow_exception(outcome.error);
  return std::move(outcome.result);
}

void Pipeline::truncate(int32_t seq, int64_t length) {
  check_healthy();
  if (checker_.in_flight(seq)) {
    fail(ErrorCode::kInvalidArgument,
         "cannot truncate sequence {} while a step with it is in flight; wait for its outcome",
         seq);
  }
  if (length < 0) {
    fail(ErrorCode::kInvalidArgument, "cannot truncate sequence {} to {} positions", seq, length);
  }
  if (length == 0) checker_.release(seq);
  {
    std::lock_guard lock(mutex_);
    enqueue_all([&] { return Job{.kind = Job::Kind::kTruncate, .seq = seq, .length = length}; });
  }
  if (options_.remote) options_.remote->truncate(seq, length);
}

void Pipeline::release(int32_t seq) {
  if (checker_.in_flight(seq)) {
    fail(ErrorCode::kInvalidArgument,
         "cannot release sequence {} while a step with it is in flight; wait for its outcome", seq);
  }
  checker_.release(seq);
  if (options_.remote) options_.remote->release(seq);
}

std::vector<double> Pipeline::busy_seconds() const {
  std::lock_guard lock(mutex_);
  std::vector<double> out;
  for (int s = 0; s < n_stages_; ++s) {
    const Worker* w = local_worker(s);
    const int64_t ns = w ? w->busy_ns.load() : remote_busy_ns_[static_cast<size_t>(s)];
    out.push_back(static_cast<double>(ns) * 1e-9);
  }
  return out;
}

Pipeline::Worker* Pipeline::local_worker(int stage) const {
  const int i = stage - first_stage_;
  return i >= 0 && i < local_stages() ? workers_[static_cast<size_t>(i)].get() : nullptr;
}

void Pipeline::drain() {
  std::unique_lock lock(mutex_);
  progress_.wait(lock, [&] {
    if (broken_) return true;
    for (const auto& w : workers_) {
      if (w->busy || !w->jobs.empty()) return false;
    }
    return true;
  });
  if (broken_) std::rethrow_exception(broken_);
}

int64_t Pipeline::committed(int stage, int32_t seq) {
  Worker* w = local_worker(stage);
  if (w == nullptr) {
    fail(ErrorCode::kInvalidArgument, "stage {} does not run in this process (it runs [{}, {}))",
         stage, first_stage_, first_stage_ + local_stages());
  }
  drain();
  return w->backend->committed(seq);
}

void Pipeline::decide(uint64_t ticket, bool commit) {
  std::shared_ptr<Flight> f;
  {
    std::unique_lock lock(mutex_);
    auto it = std::find_if(flights_.begin(), flights_.end(),
                           [&](const auto& x) { return x->ticket == ticket; });
    if (it == flights_.end()) {
      fail(ErrorCode::kInternal,
           "the leader decided step ticket {}, which was never submitted here", ticket);
    }
    f = *it;
    // Every process reported before the leader decided: the step is done here too.
    CONVEYOR_ASSERT(f->stages_done == local_stages());
    flights_.erase(it);
    enqueue_all([&] {
      return Job{.kind = commit ? Job::Kind::kCommit : Job::Kind::kRollback, .flight = f};
    });
  }
  checker_.complete(f->plan.step, commit);
}

namespace {
std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  }
}
}  // namespace

StepReport Pipeline::local_report(const Flight& flight) const {
  StepReport report{.ticket = flight.ticket,
                    .step = flight.plan.step,
                    .first_stage = first_stage_,
                    .n_stages = local_stages()};
  for (int s = first_stage_; s < first_stage_ + local_stages(); ++s) {
    const Flight::StageError& e = flight.errors[static_cast<size_t>(s)];
    if (e.error)
      report.failures.push_back({.stage = s, .code = e.code, .message = message_of(e.error)});
    const Trace& t = flight.traces[static_cast<size_t>(s)];
    report.trace.insert(report.trace.end(), t.begin(), t.end());
    report.busy_ns.push_back(local_worker(s)->busy_ns.load());
  }
  if (first_stage_ + local_stages() == n_stages_) report.result = flight.result;
  report.links_cancelled = links_cancelled_;
  if (broken_) report.broken = message_of(broken_);
  return report;
}

void Pipeline::on_report(StepReport&& report) {
  // A follower's link failed: every process cancels, the others told before this report can
  // complete a step here (see abort_all). Reports come from one thread, so the check and the
  // cancellation below cannot interleave with another report's.
  bool cancel = false;
  if (report.links_cancelled) {
    std::lock_guard lock(mutex_);
    cancel = !links_cancelled_;
  }
  if (cancel) options_.remote->cancel_links();
  std::exception_ptr broke;
  {
    std::lock_guard lock(mutex_);
    for (int i = 0; i < report.n_stages && i < static_cast<int>(report.busy_ns.size()); ++i) {
      remote_busy_ns_[static_cast<size_t>(report.first_stage + i)] =
          report.busy_ns[static_cast<size_t>(i)];
    }
    if (!report.broken.empty() && !broken_) {
      broken_ = broke = std::make_exception_ptr(Error(
          ErrorCode::kCommunication,
          fmt::format("rank {} (stages [{}, {})) stopped: {}", report.rank, report.first_stage,
                      report.first_stage + report.n_stages, report.broken)));
    }
    auto it = std::find_if(flights_.begin(), flights_.end(),
                           [&](const auto& x) { return x->ticket == report.ticket; });
    if (cancel) {
      if (it != flights_.end() && !links_cancelled_) (*it)->caused_cancel = true;
      cancel_flights();
    }
    if (it != flights_.end()) {
      Flight& f = **it;
      const auto now = Clock::now();
      for (StepReport::Failure& failure : report.failures) {
        f.errors[static_cast<size_t>(failure.stage)] = {
            std::make_exception_ptr(
                Error(failure.code, fmt::format("rank {}: {}", report.rank, failure.message))),
            failure.code, now};
      }
      if (report.result) f.result = std::move(*report.result);
      f.traces[static_cast<size_t>(report.first_stage)] = std::move(report.trace);
      f.stages_done += report.n_stages;
      if (f.stages_done == n_stages_) {
        f.seconds = std::chrono::duration<double>(now - f.submitted).count();
        completed_.push_back(*it);
      }
    }
  }
  if (cancel) cancel_each_link();
  if (broke) on_remote_failure(broke);
  progress_.notify_all();
}

void Pipeline::on_remote_failure(std::exception_ptr error) {
  {
    std::lock_guard lock(mutex_);
    if (!broken_) broken_ = error;
  }
  cancel_each_link();  // wakes this process' stages wherever they wait on a link
  progress_.notify_all();
}

Trace Pipeline::take_trace() {
  std::lock_guard lock(mutex_);
  return std::exchange(trace_, {});
}

}  // namespace conveyor
