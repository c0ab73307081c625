// Pipeline: stage worker threads, step execution, abort on failure and the KV commit barrier.
#include "runtime/pipeline.hpp"

#include <new>
#include <unordered_map>

#include "core/check.hpp"

namespace conveyor {

struct Pipeline::Worker {
  int stage = 0;
  std::unique_ptr<StageBackend> backend;
  std::thread thread;
  uint64_t seen_generation = 0;
  // Outcome of the current step.
  std::exception_ptr error;
  ErrorCode error_code = ErrorCode::kInternal;
  std::chrono::steady_clock::time_point error_time;
  StepResult result;
  Trace trace;
};

Pipeline::Pipeline(std::vector<std::unique_ptr<StageBackend>> stages,
                   const PipelineOptions& options)
    : options_(options), epoch_(std::chrono::steady_clock::now()) {
  if (stages.empty()) fail(ErrorCode::kInvalidArgument, "a pipeline needs at least one stage");
  for (size_t s = 0; s + 1 < stages.size(); ++s) {
    links_.push_back(options.make_link ? options.make_link(static_cast<int>(s))
                                       : std::make_unique<HostLink>(options.link_capacity));
  }
  for (size_t s = 0; s < stages.size(); ++s) {
    auto worker = std::make_unique<Worker>();
    worker->stage = static_cast<int>(s);
    worker->backend = std::move(stages[s]);
    workers_.push_back(std::move(worker));
  }
  for (auto& worker : workers_) {
    Worker* w = worker.get();
    w->thread = std::thread([this, w] { worker_loop(*w); });
  }
}

Pipeline::~Pipeline() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  job_ready_.notify_all();
  for (auto& worker : workers_) {
    if (worker->thread.joinable()) worker->thread.join();
  }
}

void Pipeline::worker_loop(Worker& worker) {
  for (;;) {
    const StepPlan* plan;
    const StepContext* ctx;
    {
      std::unique_lock lock(mutex_);
      job_ready_.wait(lock, [&] { return stopping_ || generation_ != worker.seen_generation; });
      if (stopping_) return;
      worker.seen_generation = generation_;
      plan = plan_;
      ctx = ctx_;
    }
    try {
      run_program(worker, *plan, *ctx);
    } catch (const Error& e) {
      worker.error = std::current_exception();
      worker.error_code = e.code();
      worker.error_time = std::chrono::steady_clock::now();
      abort_step();
    } catch (...) {  // outside any instruction: still fail the step, never the thread
      worker.error = std::current_exception();
      worker.error_code = ErrorCode::kInternal;
      worker.error_time = std::chrono::steady_clock::now();
      abort_step();
    }
    {
      std::lock_guard lock(mutex_);
      ++n_done_;
    }
    job_done_.notify_all();
  }
}

void Pipeline::abort_step() {
  for (auto& link : links_)
    link->cancel();
}

void Pipeline::run_program(Worker& worker, const StepPlan& plan, const StepContext& ctx) {
  const int s = worker.stage;
  const bool first = s == 0;
  const bool last = s == n_stages() - 1;
  std::unordered_map<int32_t, const MicroBatch*> by_id;
  for (const MicroBatch& mb : plan.micro_batches)
    by_id[mb.id] = &mb;
  std::unordered_map<int32_t, Activations> activations;  // micro-batches held here

  const std::vector<Instruction>& program = plan.programs[static_cast<size_t>(s)];
  for (size_t i = 0; i < program.size(); ++i) {
    const Instruction& ins = program[i];
    const auto start = std::chrono::steady_clock::now();
    const MicroBatch* mb = ins.kind == OpKind::kCommit ? nullptr : by_id.at(ins.micro_batch);
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
          activations[ins.micro_batch] = std::move(message.activations);
          break;
        }
        case OpKind::kCompute:
          worker.backend->compute(*mb, ctx, activations[ins.micro_batch]);
          break;
        case OpKind::kSend: {
          CONVEYOR_ASSERT(!last);
          auto node = activations.extract(ins.micro_batch);
          CONVEYOR_ASSERT(!node.empty());
          links_[static_cast<size_t>(s)]->send(
              LinkMessage{ins.micro_batch, plan.step, std::move(node.mapped())},
              options_.link_timeout);
          break;
        }
        case OpKind::kSample: {
          CONVEYOR_ASSERT(last);
          auto node = activations.extract(ins.micro_batch);
          CONVEYOR_ASSERT(!node.empty());
          // The token return path: samples go back to the scheduler (stage 0's side).
          worker.backend->sample(*mb, ctx, node.mapped(), worker.result.tokens,
                                 worker.result.logits);
          break;
        }
        case OpKind::kCommit:
          // The commit itself happens in run_step once every stage got here (the barrier).
          break;
      }
    } catch (const std::exception& e) {
      // Name the stage and instruction, whatever the cause (a backend may also throw std::).
      const Error* error = dynamic_cast<const Error*>(&e);
      const ErrorCode code = error                                     ? error->code()
                             : dynamic_cast<const std::bad_alloc*>(&e) ? ErrorCode::kOutOfMemory
                                                                       : ErrorCode::kInternal;
      const std::string where =
          ins.kind == OpKind::kCommit
              ? std::string("commit")
              : fmt::format("{} of micro-batch {}", to_string(ins.kind), ins.micro_batch);
      throw Error(code, fmt::format("stage {} failed at instruction {} ({}) of step {} ({}): {}", s,
                                    i, where, plan.step, to_string(plan.phase), e.what()));
    }
    if (ctx.record_trace) {
      const auto end = std::chrono::steady_clock::now();
      using us = std::chrono::duration<double, std::micro>;
      worker.trace.push_back(TraceEvent{
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

StepResult Pipeline::run_step(const StepPlan& plan, const StepContext& ctx) {
  if (plan.n_stages != n_stages()) {
    fail(ErrorCode::kInvalidArgument, "plan is for {} stages but the pipeline has {}",
         plan.n_stages, n_stages());
  }
  validate(plan, ValidateOptions{.link_capacity = options_.link_capacity});

  for (auto& worker : workers_) {
    worker->error = nullptr;
    worker->result = {};
  }
  {
    std::lock_guard lock(mutex_);
    plan_ = &plan;
    ctx_ = &ctx;
    n_done_ = 0;
    ++generation_;
  }
  job_ready_.notify_all();
  {
    std::unique_lock lock(mutex_);
    job_done_.wait(lock, [&] { return n_done_ == n_stages(); });
    plan_ = nullptr;
    ctx_ = nullptr;
  }

  // The root cause is the earliest failure that is not a consequence of the abort.
  Worker* failed = nullptr;
  for (auto& worker : workers_) {
    if (!worker->error) continue;
    auto rank = [](const Worker& w) { return w.error_code == ErrorCode::kAborted ? 1 : 0; };
    if (!failed || rank(*worker) < rank(*failed) ||
        (rank(*worker) == rank(*failed) && worker->error_time < failed->error_time)) {
      failed = worker.get();
    }
  }
  // Every link is reset and, on failure, every stage rolled back, whatever throws on the way
  // (a link that cannot recover, e.g. an NCCL communicator that cannot be rebuilt).
  std::exception_ptr reset_error;
  for (auto& link : links_) {
    try {
      link->reset();
    } catch (...) {
      if (!reset_error) reset_error = std::current_exception();
    }
  }
  if (failed || reset_error) {
    for (auto& worker : workers_)
      worker->backend->rollback();
    std::rethrow_exception(failed ? failed->error : reset_error);
  }
  for (auto& worker : workers_)
    worker->backend->commit(plan.step);
  return std::move(workers_.back()->result);
}

void Pipeline::truncate(int32_t seq, int64_t length) {
  for (auto& worker : workers_)
    worker->backend->truncate(seq, length);
}

int64_t Pipeline::committed(int stage, int32_t seq) const {
  return workers_.at(static_cast<size_t>(stage))->backend->committed(seq);
}

Trace Pipeline::take_trace() {
  Trace trace;
  for (auto& worker : workers_) {
    trace.insert(trace.end(), worker->trace.begin(), worker->trace.end());
    worker->trace.clear();
  }
  return trace;
}

}  // namespace conveyor
