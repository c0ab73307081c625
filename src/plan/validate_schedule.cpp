// validate(PipelineSchedule) and ScheduleChecker: the rules on several steps in flight — each
// sequence in one step at a time and one cohort per slot lifetime, commits before next steps —
// and a replay of the stages' concatenated programs that proves they finish with bounded links.
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "conveyor/step_plan.hpp"
#include "core/check.hpp"

namespace conveyor {

namespace {

template <typename... Args>
[[noreturn]] void schedule_violation(std::string_view rule, fmt::format_string<Args...> format,
                                     Args&&... args) {
  fail(ErrorCode::kInvalidArgument, "schedule is invalid ({}): {}", rule,
       fmt::format(format, std::forward<Args>(args)...));
}

// Replays the stages: each runs the programs of the submitted plans in submission order; a Send
// blocks while its link holds `capacity` messages, a Recv until its message is first on the link.
class StageReplay {
 public:
  StageReplay(int n_stages, size_t capacity)
      : capacity_(capacity),
        queues_(static_cast<size_t>(n_stages)),
        links_(static_cast<size_t>(n_stages > 1 ? n_stages - 1 : 0)) {}

  void submit(const StepPlan& plan) {
    for (size_t s = 0; s < queues_.size(); ++s)
      queues_[s].push_back({&plan, 0});
    remaining_[plan.step] = static_cast<int>(queues_.size());
  }

  // Runs until `step` finished on every stage (-1: until everything did); false when stuck.
  bool run_until(int64_t step) {
    auto finished = [&] {
      if (step >= 0) return remaining_.count(step) == 0;
      return remaining_.empty();
    };
    bool progress = true;
    while (!finished() && progress) {
      progress = false;
      for (size_t s = 0; s < queues_.size(); ++s) {
        while (advance(s))
          progress = true;
      }
    }
    return finished();
  }

  // The first blocked instruction of each stage, for the error message.
  std::string blocked() const {
    std::string out;
    for (size_t s = 0; s < queues_.size(); ++s) {
      if (queues_[s].empty()) continue;
      const auto& [plan, pc] = queues_[s].front();
      out += fmt::format("{}stage {} at {} of step {}", out.empty() ? "" : "; ", s,
                         to_string(plan->programs[s][pc]), plan->step);
    }
    return out;
  }

 private:
  struct Running {
    const StepPlan* plan;
    size_t pc;
  };
  struct Message {
    int64_t step;
    int32_t micro_batch;
  };

  bool advance(size_t s) {
    if (queues_[s].empty()) return false;
    Running& r = queues_[s].front();
    const Instruction& ins = r.plan->programs[s][r.pc];
    if (ins.kind == OpKind::kRecv) {
      std::deque<Message>& link = links_[s - 1];
      if (link.empty()) return false;
      if (link.front().step != r.plan->step || link.front().micro_batch != ins.micro_batch) {
        schedule_violation("deadlock",
                           "stage {} expects micro-batch {} of step {} but its link delivers "
                           "micro-batch {} of step {} first; every stage must run the steps in "
                           "submission order",
                           s, ins.micro_batch, r.plan->step, link.front().micro_batch,
                           link.front().step);
      }
      link.pop_front();
    } else if (ins.kind == OpKind::kSend) {
      std::deque<Message>& link = links_[s];
      if (link.size() >= capacity_) return false;
      link.push_back({r.plan->step, ins.micro_batch});
    } else if (ins.kind == OpKind::kCommit) {
      if (--remaining_[r.plan->step] == 0) remaining_.erase(r.plan->step);
      queues_[s].pop_front();
      return true;
    }
    ++r.pc;
    return true;
  }

  size_t capacity_;
  std::vector<std::deque<Running>> queues_;
  std::vector<std::deque<Message>> links_;
  std::map<int64_t, int> remaining_;  // step -> stages that have not finished it
};

}  // namespace

void ScheduleChecker::submit(const StepPlan& plan) {
  for (const SeqState& s : plan.seqs) {
    const auto it = members_.find(s.seq);
    if (it == members_.end()) continue;
    const Member& m = it->second;
    if (m.in_flight_step >= 0) {
      schedule_violation("step dependency",
                         "step {} names sequence {}, whose step {} has not completed; a "
                         "sequence's next step starts only after its previous step was sampled "
                         "and committed on every stage",
                         plan.step, s.seq, m.in_flight_step);
    }
    if (plan.step <= m.last_step) {
      schedule_violation("step dependency",
                         "step {} of sequence {} comes after its step {}; a sequence's steps are "
                         "numbered in the order they run",
                         plan.step, s.seq, m.last_step);
    }
    if (m.cohort != plan.cohort) {
      schedule_violation("cohort",
                         "step {} puts sequence {} in cohort {} but it belongs to cohort {}; a "
                         "sequence stays in one cohort until its slot is released",
                         plan.step, s.seq, plan.cohort, m.cohort);
    }
  }
  if (in_flight_.count(plan.step) != 0) {
    schedule_violation("plan shape",
                       "step {} is submitted while a step of that number is in flight", plan.step);
  }
  std::vector<int32_t>& seqs = in_flight_[plan.step];
  for (const SeqState& s : plan.seqs) {
    Member& m = members_[s.seq];
    m.cohort = plan.cohort;
    m.in_flight_step = plan.step;
    seqs.push_back(s.seq);
  }
}

void ScheduleChecker::complete(int64_t step, bool committed) {
  const auto it = in_flight_.find(step);
  if (it == in_flight_.end()) {
    schedule_violation("plan shape", "step {} completes but it is not in flight", step);
  }
  for (int32_t seq : it->second) {
    Member& m = members_[seq];
    m.in_flight_step = -1;
    if (committed) m.last_step = step;
  }
  in_flight_.erase(it);
}

void ScheduleChecker::release(int32_t seq) {
  const auto it = members_.find(seq);
  if (it == members_.end()) return;
  if (it->second.in_flight_step >= 0) {
    schedule_violation("step dependency",
                       "sequence {} is released while its step {} is in flight; release a slot "
                       "only after its last step completed",
                       seq, it->second.in_flight_step);
  }
  members_.erase(it);
}

bool ScheduleChecker::in_flight(int32_t seq) const {
  const auto it = members_.find(seq);
  return it != members_.end() && it->second.in_flight_step >= 0;
}

void validate(const PipelineSchedule& schedule, const ValidateOptions& options) {
  std::map<int64_t, const StepPlan*> by_step;
  for (const StepPlan& plan : schedule.plans) {
    if (plan.n_stages != schedule.n_stages) {
      schedule_violation("plan shape", "step {} is planned for {} stages but the schedule has {}",
                         plan.step, plan.n_stages, schedule.n_stages);
    }
    if (!by_step.emplace(plan.step, &plan).second) {
      schedule_violation("plan shape", "two plans have step number {}; number steps uniquely",
                         plan.step);
    }
    validate(plan, options);
  }
  ScheduleChecker checker;
  StageReplay replay(schedule.n_stages, static_cast<size_t>(options.link_capacity));
  std::map<int64_t, bool> submitted;
  for (const ScheduleEvent& e : schedule.events) {
    switch (e.kind) {
      case ScheduleEvent::Kind::kSubmit: {
        const auto it = by_step.find(e.step);
        if (it == by_step.end()) {
          schedule_violation("plan shape", "an event submits step {} but no plan has that number",
                             e.step);
        }
        if (submitted[e.step]) {
          schedule_violation("plan shape", "step {} is submitted twice", e.step);
        }
        checker.submit(*it->second);
        submitted[e.step] = true;
        replay.submit(*it->second);
        break;
      }
      case ScheduleEvent::Kind::kComplete:
        checker.complete(e.step);
        if (!replay.run_until(e.step)) {
          schedule_violation("deadlock",
                             "the stages cannot finish step {} with links of {} message(s): {}",
                             e.step, options.link_capacity, replay.blocked());
        }
        break;
      case ScheduleEvent::Kind::kRelease:
        checker.release(e.seq);
        break;
    }
  }
  for (const auto& [step, plan] : by_step) {
    if (!submitted[step]) {
      schedule_violation("plan shape", "step {} is planned but never submitted", step);
    }
  }
  if (!replay.run_until(-1)) {
    schedule_violation("deadlock",
                       "the stages cannot finish the submitted steps with links of {} "
                       "message(s): {}",
                       options.link_capacity, replay.blocked());
  }
}

}  // namespace conveyor
