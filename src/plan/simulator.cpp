// Simulator: a discrete-event replay of per-stage programs over bounded FIFO links, timed by the
// cost model; also whole generations planned with the runtime's plan builders.
#include "conveyor/simulator.hpp"

#include <algorithm>
#include <limits>
#include <map>

#include "core/check.hpp"
#include "plan/plan_builders.hpp"

namespace conveyor {

void SimulatorOptions::validate(int n_stages) const {
  topology.validate(n_stages);
  if (link_capacity < 1) {
    fail(ErrorCode::kInvalidArgument, "link_capacity is {} but must be at least 1", link_capacity);
  }
}

SimulatedStep simulate_step(const StepPlan& plan, const Partition& partition,
                            const CostModel& model, const SimulatorOptions& options,
                            double start_us) {
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

  std::map<int32_t, const MicroBatch*> by_id;
  for (const MicroBatch& mb : plan.micro_batches)
    by_id[mb.id] = &mb;
  constexpr double kUs = 1e6;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const DeviceSpec& first_device = options.topology.device(0);
  double host_cores = options.host_cores;
  if (host_cores < 0.0) host_cores = first_device.profile ? first_device.profile->host_cores : 0.0;

  // Per link: when the k-th message arrives at the receiver and when the receiver took it.
  struct LinkState {
    std::vector<double> arrival;
    std::vector<double> taken;
  };
  // What a stage is doing: nothing (its next instruction may start), a shared compute task
  // (progresses at the current rate), or a fixed-length task (a send's transfer).
  struct StageState {
    size_t pc = 0;
    double free_since = 0.0;  // end of its previous instruction: the next event starts here
    bool running = false;
    bool shared = false;
    double remaining_us = 0.0;  // shared tasks: work left at full speed
    double end_us = 0.0;        // fixed tasks
    size_t sent = 0, received = 0;
  };
  std::vector<LinkState> links(static_cast<size_t>(std::max(S - 1, 0)));
  std::vector<StageState> st(static_cast<size_t>(S));
  for (StageState& x : st)
    x.free_since = start_us;

  SimulatedStep out;
  out.busy_s.assign(static_cast<size_t>(S), 0.0);
  size_t remaining = 0;
  for (const auto& program : plan.programs)
    remaining += program.size();

  double now = start_us;
  auto record = [&](int s, const Instruction& ins, double begin, double end) {
    const MicroBatch* mb = ins.kind == OpKind::kCommit ? nullptr : by_id.at(ins.micro_batch);
    out.trace.push_back(TraceEvent{.stage = s,
                                   .kind = ins.kind,
                                   .micro_batch = ins.micro_batch,
                                   .step = plan.step,
                                   .phase = plan.phase,
                                   .n_tokens = mb ? mb->n_tokens() : 0,
                                   .start_us = begin,
                                   .end_us = end});
    if (ins.kind == OpKind::kCompute || ins.kind == OpKind::kSample) {
      out.busy_s[static_cast<size_t>(s)] += (end - begin) / kUs;
    }
    StageState& x = st[static_cast<size_t>(s)];
    x.free_since = end;
    x.running = false;
    ++x.pc;
    --remaining;
  };

  while (remaining > 0) {
    // Start (or finish at once) every instruction that can go at `now`.
    for (bool progress = true; progress;) {
      progress = false;
      for (int s = 0; s < S; ++s) {
        StageState& x = st[static_cast<size_t>(s)];
        const std::vector<Instruction>& program = plan.programs[static_cast<size_t>(s)];
        if (x.running || x.pc >= program.size()) continue;
        const Instruction& ins = program[x.pc];
        const DeviceSpec& device = options.topology.device(s);
        const MicroBatch* mb = ins.kind == OpKind::kCommit ? nullptr : by_id.at(ins.micro_batch);
        const Workload work = mb ? Workload::of(*mb, plan.phase, options.all_logits) : Workload{};
        switch (ins.kind) {
          case OpKind::kRecv: {
            LinkState& link = links[static_cast<size_t>(s - 1)];
            if (x.received >= link.arrival.size() || link.arrival[x.received] > now) break;
            link.taken.push_back(now);
            ++x.received;
            record(s, ins, x.free_since, now);
            progress = true;
            break;
          }
          case OpKind::kSend: {
            LinkState& link = links[static_cast<size_t>(s)];
            const auto cap = static_cast<size_t>(options.link_capacity);
            if (x.sent >= cap && x.sent - cap >= link.taken.size()) break;  // link full
            const LinkSpec spec = options.topology.link(s);
            const double total = model.send_seconds(work, spec, device) * kUs;
            const double latency = std::min(
                total, (device.profile ? device.profile->link_latency_s : spec.latency_s) * kUs);
            x.running = true;
            x.shared = false;
            x.end_us = now + (total - latency);
            x.remaining_us = latency;  // kept for the arrival time
            progress = true;
            break;
          }
          case OpKind::kCompute:
          case OpKind::kSample: {
            const double t =
                ins.kind == OpKind::kCompute
                    ? model.stage_seconds({partition.range(s).size(), s == 0, false}, work, device)
                    : model.seconds(UnitKind::kHead, work, device);
            x.running = true;
            x.shared = true;
            x.remaining_us = t * kUs;
            progress = true;
            break;
          }
          case OpKind::kCommit:
            record(s, ins, x.free_since, std::max(now, x.free_since));
            progress = true;
            break;
        }
      }
    }
    if (remaining == 0) break;

    // Shared compute progresses at host_cores / busy stages when the host has fewer cores than
    // busy stages (stages as threads on one machine); otherwise at full speed.
    int n_shared = 0;
    for (const StageState& x : st)
      n_shared += x.running && x.shared ? 1 : 0;
    const double rate =
        host_cores > 0.0 && n_shared > 0 ? std::min(1.0, host_cores / n_shared) : 1.0;
    double next = kInf;
    for (int s = 0; s < S; ++s) {
      const StageState& x = st[static_cast<size_t>(s)];
      if (x.running) {
        next = std::min(next, x.shared ? now + x.remaining_us / rate : x.end_us);
      } else if (x.pc < plan.programs[static_cast<size_t>(s)].size() &&
                 plan.programs[static_cast<size_t>(s)][x.pc].kind == OpKind::kRecv) {
        const LinkState& link = links[static_cast<size_t>(s - 1)];
        if (x.received < link.arrival.size()) next = std::min(next, link.arrival[x.received]);
      }
    }
    if (!(next < kInf)) {
      fail(ErrorCode::kInternal,
           "simulation of step {} stalled with {} instructions left although the plan validated",
           plan.step, remaining);
    }
    const double dt = std::max(0.0, next - now);
    now = std::max(now, next);
    for (int s = 0; s < S; ++s) {
      StageState& x = st[static_cast<size_t>(s)];
      if (!x.running) continue;
      const Instruction& ins = plan.programs[static_cast<size_t>(s)][x.pc];
      if (x.shared) {
        x.remaining_us -= dt * rate;
        if (x.remaining_us <= 1e-9 * std::max(1.0, now)) record(s, ins, x.free_since, now);
      } else if (x.end_us <= now) {
        links[static_cast<size_t>(s)].arrival.push_back(now + x.remaining_us);
        ++x.sent;
        record(s, ins, x.free_since, now);
      }
    }
  }
  double end = start_us;
  for (const StageState& x : st)
    end = std::max(end, x.free_since);
  const double overhead = first_device.profile ? first_device.profile->step_overhead_s : 0.0;
  out.seconds = (end - start_us) / kUs + overhead;
  return out;
}

void GenerationShape::validate() const {
  if (n_seqs < 1 || prompt_tokens < 1 || new_tokens < 0 || prefill_micro_batches < 0 ||
      decode_micro_batches < 0 || chunk_tokens < 0) {
    fail(ErrorCode::kInvalidArgument,
         "generation shape needs n_seqs >= 1 ({}), prompt_tokens >= 1 ({}), new_tokens >= 0 ({}) "
         "and micro-batch counts and chunk_tokens >= 0",
         n_seqs, prompt_tokens, new_tokens);
  }
}

SimulatedGeneration simulate_generation(const GenerationShape& shape, const Partition& partition,
                                        const CostModel& model, const SimulatorOptions& options) {
  shape.validate();
  const int S = partition.n_stages();
  SimulatedGeneration out;
  double now_us = 0.0;
  int64_t step = 0;
  {
    std::vector<PrefillSeq> seqs;
    for (int32_t r = 0; r < shape.n_seqs; ++r)
      seqs.push_back({r, 0, shape.prompt_tokens, true});
    const StepPlan plan = build_prefill_plan(
        step++, seqs,
        PrefillPlanOptions{.n_stages = S,
                           .n_micro_batches = shape.prefill_micro_batches,
                           .chunk_tokens = shape.chunk_tokens,
                           .sample_rule = options.all_logits ? SampleRule::kEveryMicroBatch
                                                             : SampleRule::kWhereChunksSample});
    SimulatedStep sim = simulate_step(plan, partition, model, options, now_us);
    out.prefill_micro_batches = static_cast<int>(plan.micro_batches.size());
    out.prefill_seconds = sim.seconds;
    out.step_seconds.push_back(sim.seconds);
    now_us += sim.seconds * 1e6;
    out.trace.insert(out.trace.end(), sim.trace.begin(), sim.trace.end());
  }
  for (int64_t t = 1; t < shape.new_tokens; ++t) {
    std::vector<SeqState> seqs;
    for (int32_t r = 0; r < shape.n_seqs; ++r)
      seqs.push_back({r, shape.prompt_tokens + t - 1});
    const StepPlan plan = build_decode_plan(
        step++, seqs,
        DecodePlanOptions{.n_stages = S, .n_micro_batches = shape.decode_micro_batches});
    SimulatedStep sim = simulate_step(plan, partition, model, options, now_us);
    if (out.decode_micro_batches == 0) {
      out.decode_micro_batches = static_cast<int>(plan.micro_batches.size());
    }
    out.decode_seconds += sim.seconds;
    out.step_seconds.push_back(sim.seconds);
    now_us += sim.seconds * 1e6;
    out.trace.insert(out.trace.end(), sim.trace.begin(), sim.trace.end());
  }
  return out;
}

}  // namespace conveyor
