// Simulator: a discrete-event replay of per-stage programs over bounded FIFO links, timed by the
// cost model; also whole generations planned with the runtime's plan builders.
#include "conveyor/simulator.hpp"

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "conveyor/schedule.hpp"
#include "core/check.hpp"

namespace conveyor {

void SimulatorOptions::validate(int n_stages) const {
  topology.validate(n_stages);
  if (link_capacity < 1) {
    fail(ErrorCode::kInvalidArgument, "link_capacity is {} but must be at least 1", link_capacity);
  }
}

namespace {

constexpr double kUs = 1e6;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Discrete-event replay of the stages running the programs of submitted plans in submission
// order over bounded FIFO links (shared by all plans). A plan's programs start no earlier than
// its release time; run() stops at each plan's completion (Commit reached on every stage) so the
// caller can submit what depends on it, as the engine's scheduler does.
class Replay {
 public:
  Replay(const Partition& partition, const CostModel& model, const SimulatorOptions& options)
      : partition_(partition),
        model_(model),
        options_(options),
        S_(partition.n_stages()),
        links_(static_cast<size_t>(std::max(S_ - 1, 0))),
        st_(static_cast<size_t>(S_)),
        busy_s_(static_cast<size_t>(S_), 0.0) {
    const DeviceSpec& first = options.topology.device(0);
    host_cores_ = options.host_cores;
    if (host_cores_ < 0.0) host_cores_ = first.profile ? first.profile->host_cores : 0.0;
  }

  double now() const { return now_; }
  const std::vector<double>& busy_s() const { return busy_s_; }
  Trace take_trace() { return std::exchange(trace_, {}); }

  void submit(const StepPlan& plan, double release_us) {
    auto p = std::make_unique<Queued>();
    p->plan = &plan;
    p->release_us = release_us;
    p->stages_left = S_;
    for (const MicroBatch& mb : plan.micro_batches)
      p->by_id[mb.id] = &mb;
    for (StageState& x : st_)
      x.queue.push_back(p.get());
    for (const auto& program : plan.programs)
      remaining_ += program.size();
    queued_.push_back(std::move(p));
    if (first_submit_) {  // time starts at the first release; later ones come at or after now
      now_ = release_us;
      for (StageState& x : st_)
        x.free_since = release_us;
      first_submit_ = false;
    }
  }

  struct Completion {
    const StepPlan* plan = nullptr;
    double end_us = 0.0;
  };

  // Runs until the next plan completes; nullopt when nothing is queued.
  std::optional<Completion> run() {
    for (;;) {
      if (!completions_.empty()) {
        Completion c = completions_.front();
        completions_.erase(completions_.begin());
        return c;
      }
      if (remaining_ == 0) return std::nullopt;
      start_ready();
      if (!completions_.empty()) continue;
      if (remaining_ == 0) continue;
      advance();
    }
  }

 private:
  struct Queued {
    const StepPlan* plan = nullptr;
    double release_us = 0.0;
    int stages_left = 0;
    double end_us = 0.0;
    std::map<int32_t, const MicroBatch*> by_id;
  };
  // Per link: when the k-th message arrives at the receiver and when the receiver took it.
  struct LinkState {
    std::vector<double> arrival;
    std::vector<double> taken;
  };
  // What a stage is doing: nothing (its next instruction may start), a shared compute task
  // (progresses at the current rate), or a fixed-length task (a send's transfer).
  struct StageState {
    std::deque<Queued*> queue;  // plans to run, in submission order
    size_t pc = 0;              // in queue.front()'s program
    double free_since = 0.0;    // end of its previous instruction: the next event starts here
    bool running = false;
    bool shared = false;
    double remaining_us = 0.0;  // shared tasks: work left at full speed
    double end_us = 0.0;        // fixed tasks
    size_t sent = 0, received = 0;
  };

  const Instruction* current(int s) const {
    const StageState& x = st_[static_cast<size_t>(s)];
    if (x.queue.empty()) return nullptr;
    const Queued& q = *x.queue.front();
    if (q.release_us > now_) return nullptr;  // not submitted yet
    return &q.plan->programs[static_cast<size_t>(s)][x.pc];
  }

  void record(int s, const Instruction& ins, double begin, double end) {
    StageState& x = st_[static_cast<size_t>(s)];
    Queued& q = *x.queue.front();
    const MicroBatch* mb = ins.kind == OpKind::kCommit ? nullptr : q.by_id.at(ins.micro_batch);
    trace_.push_back(TraceEvent{.stage = s,
                                .kind = ins.kind,
                                .micro_batch = ins.micro_batch,
                                .step = q.plan->step,
                                .phase = q.plan->phase,
                                .n_tokens = mb ? mb->n_tokens() : 0,
                                .start_us = begin,
                                .end_us = end});
    if (ins.kind == OpKind::kCompute || ins.kind == OpKind::kSample) {
      busy_s_[static_cast<size_t>(s)] += (end - begin) / kUs;
    }
    x.free_since = end;
    x.running = false;
    ++x.pc;
    --remaining_;
    if (ins.kind == OpKind::kCommit) {
      x.queue.pop_front();
      x.pc = 0;
      q.end_us = std::max(q.end_us, end);
      if (--q.stages_left == 0) completions_.push_back({q.plan, q.end_us});
    }
  }

  // Starts (or finishes at once) every instruction that can go at now_.
  void start_ready() {
    for (bool progress = true; progress;) {
      progress = false;
      for (int s = 0; s < S_; ++s) {
        StageState& x = st_[static_cast<size_t>(s)];
        if (x.running) continue;
        const Instruction* next = current(s);
        if (next == nullptr) continue;
        const Instruction& ins = *next;
        const Queued& q = *x.queue.front();
        // A stage idles until the plan's release; the instruction's span starts there.
        x.free_since = std::max(x.free_since, q.release_us);
        const DeviceSpec& device = options_.topology.device(s);
        const MicroBatch* mb = ins.kind == OpKind::kCommit ? nullptr : q.by_id.at(ins.micro_batch);
        const Workload work =
            mb ? Workload::of(*mb, q.plan->phase,
                              options_.all_logits ? LogitsRows::kAll : LogitsRows::kSampled)
               : Workload{};
        switch (ins.kind) {
          case OpKind::kRecv: {
            LinkState& link = links_[static_cast<size_t>(s - 1)];
            if (x.received >= link.arrival.size() || link.arrival[x.received] > now_) break;
            link.taken.push_back(now_);
            ++x.received;
            record(s, ins, x.free_since, now_);
            progress = true;
            break;
          }
          case OpKind::kSend: {
            LinkState& link = links_[static_cast<size_t>(s)];
            const auto cap = static_cast<size_t>(options_.link_capacity);
            if (x.sent >= cap && x.sent - cap >= link.taken.size()) break;  // link full
            const LinkSpec spec = options_.topology.link(s);
            const double total = model_.send_seconds(work, spec, device) * kUs;
            const double latency = std::min(
                total, (device.profile ? device.profile->link_latency_s : spec.latency_s) * kUs);
            x.running = true;
            x.shared = false;
            x.end_us = now_ + (total - latency);
            x.remaining_us = latency;  // kept for the arrival time
            progress = true;
            break;
          }
          case OpKind::kCompute:
          case OpKind::kSample: {
            const double t = ins.kind == OpKind::kCompute
                                 ? model_.stage_seconds({partition_.range(s).size(), s == 0, false},
                                                        work, device)
                                 : model_.seconds(UnitKind::kHead, work, device);
            x.running = true;
            x.shared = true;
            x.remaining_us = t * kUs;
            progress = true;
            break;
          }
          case OpKind::kCommit:
            record(s, ins, x.free_since, std::max(now_, x.free_since));
            progress = true;
            break;
        }
      }
    }
  }

  // Moves time to the next event: a task's end, a message's arrival or a plan's release.
  void advance() {
    // Shared compute progresses at host_cores / busy stages when the host has fewer cores than
    // busy stages (stages as threads on one machine); otherwise at full speed.
    int n_shared = 0;
    for (const StageState& x : st_)
      n_shared += x.running && x.shared ? 1 : 0;
    const double rate =
        host_cores_ > 0.0 && n_shared > 0 ? std::min(1.0, host_cores_ / n_shared) : 1.0;
    double next = kInf;
    for (int s = 0; s < S_; ++s) {
      const StageState& x = st_[static_cast<size_t>(s)];
      if (x.running) {
        next = std::min(next, x.shared ? now_ + x.remaining_us / rate : x.end_us);
        continue;
      }
      if (x.queue.empty()) continue;
      const Queued& q = *x.queue.front();
      if (q.release_us > now_) {
        next = std::min(next, q.release_us);
      } else if (q.plan->programs[static_cast<size_t>(s)][x.pc].kind == OpKind::kRecv) {
        const LinkState& link = links_[static_cast<size_t>(s - 1)];
        if (x.received < link.arrival.size()) next = std::min(next, link.arrival[x.received]);
      }
    }
    if (!(next < kInf)) {
      fail(ErrorCode::kInternal,
           "simulation stalled with {} instructions left although the plans validated", remaining_);
    }
    const double dt = std::max(0.0, next - now_);
    now_ = std::max(now_, next);
    for (int s = 0; s < S_; ++s) {
      StageState& x = st_[static_cast<size_t>(s)];
      if (!x.running) continue;
      const Instruction& ins = x.queue.front()->plan->programs[static_cast<size_t>(s)][x.pc];
      if (x.shared) {
        x.remaining_us -= dt * rate;
        if (x.remaining_us <= 1e-9 * std::max(1.0, now_)) record(s, ins, x.free_since, now_);
      } else if (x.end_us <= now_) {
        links_[static_cast<size_t>(s)].arrival.push_back(now_ + x.remaining_us);
        ++x.sent;
        record(s, ins, x.free_since, now_);
      }
    }
  }

  const Partition& partition_;
  const CostModel& model_;
  const SimulatorOptions& options_;
  const int S_;
  double host_cores_ = 0.0;
  std::vector<LinkState> links_;
  std::vector<StageState> st_;
  std::vector<std::unique_ptr<Queued>> queued_;
  std::vector<Completion> completions_;
  std::vector<double> busy_s_;
  Trace trace_;
  size_t remaining_ = 0;
  double now_ = 0.0;
  bool first_submit_ = true;
};

void check_inputs(const StepPlan& plan, const Partition& partition, const CostModel& model,
                  const SimulatorOptions& options) {
  const int S = plan.n_stages;
  if (partition.n_stages() != S || partition.n_layers() != model.n_layers()) {
    fail(ErrorCode::kInvalidArgument,
         "plan has {} stages and the partition {} stages over {} layers, but the model has {} "
         "layers; build the plan for the partition's stages",
         S, partition.n_stages(), partition.n_layers(), model.n_layers());
  }
  options.validate(S);
  for (const DeviceSpec& d : options.topology.devices) {
    if (d.profile) model.check_profile(*d.profile);
  }
  validate(plan, ValidateOptions{.link_capacity = options.link_capacity});
}

double step_overhead_s(const SimulatorOptions& options) {
  const DeviceSpec& first = options.topology.device(0);
  return first.profile ? first.profile->step_overhead_s : 0.0;
}

}  // namespace

SimulatedStep simulate_step(const StepPlan& plan, const Partition& partition,
                            const CostModel& model, const SimulatorOptions& options,
                            double start_us) {
  check_inputs(plan, partition, model, options);
  Replay replay(partition, model, options);
  replay.submit(plan, start_us);
  const std::optional<Replay::Completion> done = replay.run();
  CONVEYOR_ASSERT(done.has_value());
  SimulatedStep out;
  out.trace = replay.take_trace();
  out.busy_s = replay.busy_s();
  out.seconds = (done->end_us - start_us) / kUs + step_overhead_s(options);
  return out;
}

void GenerationShape::validate() const {
  if (n_seqs < 1 || prompt_tokens < 1 || new_tokens < 0) {
    fail(ErrorCode::kInvalidArgument,
         "generation shape needs n_seqs >= 1 ({}), prompt_tokens >= 1 ({}) and new_tokens >= 0 "
         "({})",
         n_seqs, prompt_tokens, new_tokens);
  }
  policy.validate();
}

SimulatedGeneration simulate_generation(const GenerationShape& shape, const Partition& partition,
                                        const CostModel& model, const SimulatorOptions& options) {
  shape.validate();
  const int S = partition.n_stages();
  const double overhead_us = step_overhead_s(options) * kUs;
  // Cohorts as the engine's scheduler forms them: each new sequence joins the smallest.
  const int K = cohort_count(shape.policy, S, shape.n_seqs);
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(K));
  for (int32_t r = 0; r < shape.n_seqs; ++r) {
    std::vector<int64_t> sizes;
    for (const auto& m : members)
      sizes.push_back(static_cast<int64_t>(m.size()));
    members[static_cast<size_t>(pick_cohort(sizes))].push_back(r);
  }
  // Every step of a cohort: its prompts whole, then one decode step per further token (the
  // first token comes from the prefill).
  const LogitsRows rows = options.all_logits ? LogitsRows::kAll : LogitsRows::kSampled;
  std::deque<StepPlan> plans;  // stable addresses for the replay
  int64_t next_step = 0;
  auto plan_for = [&](int c, int64_t t) -> const StepPlan& {
    std::vector<SeqState> decoding;
    std::vector<PromptProgress> prompts;
    for (int32_t r : members[static_cast<size_t>(c)]) {
      if (t == 0) {
        prompts.push_back({r, 0, shape.prompt_tokens});
      } else {
        decoding.push_back({r, shape.prompt_tokens + t - 1});
      }
    }
    plans.push_back(plan_step(shape.policy, S, next_step++,
                              step_work(shape.policy, decoding, prompts), rows,
                              static_cast<int32_t>(c)));
    check_inputs(plans.back(), partition, model, options);
    return plans.back();
  };

  SimulatedGeneration out;
  out.schedule.n_stages = S;
  using Kind = ScheduleEvent::Kind;
  Replay replay(partition, model, options);
  std::map<const StepPlan*, std::pair<int, int64_t>> cohort_of;  // plan -> (cohort, t)
  std::map<const StepPlan*, double> released;
  for (int c = 0; c < K; ++c) {
    const StepPlan& p = plan_for(c, 0);
    cohort_of[&p] = {c, 0};
    released[&p] = 0.0;
    replay.submit(p, 0.0);
    out.schedule.events.push_back({Kind::kSubmit, p.step});
  }
  struct Span {
    Phase phase;
    double begin, end;
  };
  std::vector<Span> spans;
  while (const std::optional<Replay::Completion> done = replay.run()) {
    const StepPlan& p = *done->plan;
    const double end = done->end_us + overhead_us;
    out.schedule.events.push_back({Kind::kComplete, p.step});
    spans.push_back({p.phase, released[&p], end});
    out.step_seconds.push_back((end - released[&p]) / kUs);
    if (p.phase == Phase::kPrefill && out.prefill_micro_batches == 0) {
      out.prefill_micro_batches = static_cast<int>(p.micro_batches.size());
    }
    if (p.phase == Phase::kDecode && out.decode_micro_batches == 0) {
      out.decode_micro_batches = static_cast<int>(p.micro_batches.size());
    }
    const auto [c, t] = cohort_of[&p];
    if (t + 1 < shape.new_tokens) {
      const StepPlan& next = plan_for(c, t + 1);
      cohort_of[&next] = {c, t + 1};
      released[&next] = end;
      replay.submit(next, end);
      out.schedule.events.push_back({Kind::kSubmit, next.step});
    }
  }
  out.trace = replay.take_trace();
  // The coordinator's schedule keeps the rules the runtime enforces (each cohort's next step after
  // its commit, one cohort per sequence, no deadlock): prove it as the runtime would.
  out.schedule.plans.assign(plans.begin(), plans.end());
  validate(out.schedule, ValidateOptions{.link_capacity = options.link_capacity});
  // Wall time while any step of a phase was in flight (cohorts overlap: counted once).
  for (const Phase phase : {Phase::kPrefill, Phase::kDecode}) {
    std::vector<Span> of;
    for (const Span& s : spans) {
      if (s.phase == phase) of.push_back(s);
    }
    std::sort(of.begin(), of.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
    double covered = -kInf, total = 0.0;
    for (const Span& s : of) {
      const double from = std::max(s.begin, covered);
      if (s.end > from) total += s.end - from;
      covered = std::max(covered, s.end);
    }
    (phase == Phase::kPrefill ? out.prefill_seconds : out.decode_seconds) = total / kUs;
  }
  return out;
}

}  // namespace conveyor
