// validate(StepPlan): proves a plan keeps the pipeline-parallel invariants (layer and step
// dependency, causal/KV order, FIFO communication, no deadlock with bounded links) or throws an
// Error naming the violated rule, stage, micro-batch and sequence.
#include <algorithm>
#include <deque>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "conveyor/step_plan.hpp"
#include "core/check.hpp"

namespace conveyor {

namespace {

constexpr int kNone = -1;

// Where a micro-batch's instructions sit in one stage's program (instruction indices).
struct Seen {
  int recv = kNone;
  int compute = kNone;
  int send = kNone;
  int sample = kNone;
};

class Validator {
 public:
  Validator(const StepPlan& plan, const ValidateOptions& options)
      : plan_(plan), options_(options) {}

  void run() {
    check_shape();
    check_seqs();
    check_micro_batches();
    check_tiling();
    for (int s = 0; s < plan_.n_stages; ++s)
      check_program(s);
    for (int s = 0; s < plan_.n_stages; ++s)
      check_causal_order(s);
    // With bounded links a wrong receive order can hang before it can be noticed as a FIFO
    // mismatch, so the hang (the more fundamental failure) is looked for first.
    check_deadlock();
    check_fifo_pairing();
  }

 private:
  template <typename... Args>
  [[noreturn]] void violation(std::string_view rule, fmt::format_string<Args...> format,
                              Args&&... args) const {
    fail(ErrorCode::kInvalidArgument, "step plan {} is invalid ({}): {}", plan_.step, rule,
         fmt::format(format, std::forward<Args>(args)...));
  }

  const std::vector<Instruction>& program(int s) const {
    return plan_.programs[static_cast<size_t>(s)];
  }
  int last_stage() const { return plan_.n_stages - 1; }

  void check_shape() {
    if (options_.link_capacity < 1) {
      fail(ErrorCode::kInvalidArgument,
           "ValidateOptions::link_capacity is {} but a link must hold at least 1 message; use 2 "
           "for a double-buffered link",
           options_.link_capacity);
    }
    if (plan_.n_stages < 1) {
      violation("plan shape", "n_stages is {}; a plan needs at least 1 stage", plan_.n_stages);
    }
    if (plan_.programs.size() != static_cast<size_t>(plan_.n_stages)) {
      violation("plan shape", "the plan has {} programs for {} stages; give one program per stage",
                plan_.programs.size(), plan_.n_stages);
    }
    if (plan_.micro_batches.empty()) {
      violation("plan shape", "the plan has no micro-batches; a step computes at least one");
    }
  }

  void check_seqs() {
    for (size_t i = 0; i < plan_.seqs.size(); ++i) {
      const SeqState& s = plan_.seqs[i];
      if (s.seq < 0) {
        violation("plan shape", "sequence id {} is negative; ids are engine slots >= 0", s.seq);
      }
      if (s.committed < 0) {
        violation("plan shape", "sequence {} has committed KV length {}; it must be >= 0", s.seq,
                  s.committed);
      }
      if (!seq_index_.emplace(s.seq, i).second) {
        violation("plan shape", "sequence {} is listed twice in plan.seqs", s.seq);
      }
    }
  }

  void check_micro_batches() {
    const bool decode = plan_.phase == Phase::kDecode;
    std::unordered_map<int32_t, int32_t> decode_mb_of_seq;  // decode: seq -> its micro-batch
    for (size_t i = 0; i < plan_.micro_batches.size(); ++i) {
      const MicroBatch& mb = plan_.micro_batches[i];
      if (mb.id < 0) {
        violation("plan shape", "micro-batch id {} is negative; ids must be >= 0", mb.id);
      }
      if (!mb_index_.emplace(mb.id, i).second) {
        violation("plan shape", "micro-batch id {} is used twice; ids must be unique", mb.id);
      }
      if (mb.step != plan_.step) {
        violation("step dependency",
                  "micro-batch {} belongs to step {} but the plan is for step {}; step t+1 may "
                  "start only after step t has committed its KV on every stage, so micro-batches "
                  "of different steps cannot be pipelined together",
                  mb.id, mb.step, plan_.step);
      }
      if (mb.chunks.empty()) {
        violation("plan shape", "micro-batch {} has no chunks; drop it or give it tokens", mb.id);
      }
      std::unordered_set<int32_t> seqs_here;
      for (const SeqChunk& c : mb.chunks) {
        if (!seq_index_.contains(c.seq)) {
          violation("plan shape",
                    "micro-batch {} computes sequence {}, which is not listed in plan.seqs (its "
                    "committed KV length is unknown); add it to plan.seqs",
                    mb.id, c.seq);
        }
        if (c.begin < 0 || c.end <= c.begin) {
          violation("plan shape",
                    "micro-batch {} has chunk [{},{}) of sequence {}; a chunk needs 0 <= begin < "
                    "end",
                    mb.id, c.begin, c.end, c.seq);
        }
        if (decode) {
          const auto [it, fresh] = decode_mb_of_seq.emplace(c.seq, mb.id);
          if (!fresh) {
            violation("step dependency",
                      "decode step {} computes sequence {} in micro-batch {} and again in "
                      "micro-batch {}; a sequence's next token depends on the token sampled in "
                      "this step, so pipeline parallelism cannot run one sequence across decode "
                      "steps: give each sequence one token per decode step",
                      plan_.step, c.seq, it->second, mb.id);
          }
          if (c.n_tokens() != 1) {
            violation("step dependency",
                      "decode step {} computes {} tokens [{},{}) of sequence {} in micro-batch "
                      "{}; decode computes exactly one token per sequence per step (token t+1 "
                      "needs the token sampled at t)",
                      plan_.step, c.n_tokens(), c.begin, c.end, c.seq, mb.id);
          }
          if (!c.sample) {
            violation("sampling",
                      "decode chunk [{},{}) of sequence {} in micro-batch {} does not sample; "
                      "every decode token samples the next one",
                      c.begin, c.end, c.seq, mb.id);
          }
        }
        if (!seqs_here.insert(c.seq).second) {
          violation("causal/KV order",
                    "micro-batch {} holds two chunks of sequence {}; merge them into one chunk "
                    "(positions ascending) so its KV is written in order",
                    mb.id, c.seq);
        }
      }
    }
  }

  // The chunks of each sequence over the whole step tile [committed, committed + n) exactly:
  // every KV position is written once, and no position reads KV that nobody writes.
  void check_tiling() {
    struct Piece {
      int64_t begin, end;
      bool sample;
      int32_t mb;
    };
    std::vector<std::vector<Piece>> pieces(plan_.seqs.size());
    for (const MicroBatch& mb : plan_.micro_batches) {
      for (const SeqChunk& c : mb.chunks) {
        pieces[seq_index_.at(c.seq)].push_back(Piece{c.begin, c.end, c.sample, mb.id});
      }
    }
    for (size_t i = 0; i < pieces.size(); ++i) {
      const SeqState& seq = plan_.seqs[i];
      std::vector<Piece>& p = pieces[i];
      if (p.empty()) {
        violation("plan shape",
                  "sequence {} is listed in plan.seqs but no micro-batch computes it; list only "
                  "the sequences that take part in the step",
                  seq.seq);
      }
      std::sort(p.begin(), p.end(), [](const Piece& a, const Piece& b) {
        return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
      });
      if (p.front().begin < seq.committed) {
        violation("causal/KV order",
                  "sequence {} has committed KV length {} but micro-batch {} recomputes "
                  "positions [{},{}); committed KV is never rewritten, start at {}",
                  seq.seq, seq.committed, p.front().mb, p.front().begin,
                  std::min(p.front().end, seq.committed), seq.committed);
      }
      if (p.front().begin > seq.committed) {
        violation("causal/KV order",
                  "sequence {} has committed KV length {} but its first chunk (micro-batch {}) "
                  "starts at position {}; positions [{},{}) would never be written and later "
                  "tokens would attend to missing KV",
                  seq.seq, seq.committed, p.front().mb, p.front().begin, seq.committed,
                  p.front().begin);
      }
      for (size_t k = 1; k < p.size(); ++k) {
        const Piece& prev = p[k - 1];
        const Piece& cur = p[k];
        if (cur.begin < prev.end) {
          violation("causal/KV order",
                    "sequence {} positions [{},{}) are computed twice in this step (micro-batches "
                    "{} and {}); each KV position is written once per step",
                    seq.seq, cur.begin, std::min(prev.end, cur.end), prev.mb, cur.mb);
        }
        if (cur.begin > prev.end) {
          violation("causal/KV order",
                    "sequence {} has a gap: positions [{},{}) lie between micro-batch {} and "
                    "micro-batch {} and are never computed, so later tokens would attend to "
                    "missing KV",
                    seq.seq, prev.end, cur.begin, prev.mb, cur.mb);
        }
      }
      for (size_t k = 0; k + 1 < p.size(); ++k) {
        if (p[k].sample) {
          violation("sampling",
                    "sequence {} samples after position {} in micro-batch {} but this step "
                    "continues it to position {}; only a sequence's last chunk may sample",
                    seq.seq, p[k].end - 1, p[k].mb, p.back().end - 1);
        }
      }
    }
  }

  // Local order of one stage's program: each micro-batch arrives (Recv), is computed once,
  // then leaves (Send) or is sampled; Commit comes once, last.
  void check_program(int s) {
    const std::vector<Instruction>& prog = program(s);
    const bool first = s == 0;
    const bool last = s == last_stage();
    std::vector<Seen> seen(plan_.micro_batches.size());
    if (prog.empty() || prog.back().kind != OpKind::kCommit) {
      violation("step dependency",
                "stage {}'s program does not end with commit; every stage must commit the step's "
                "KV after all its work and before the next step starts",
                s);
    }
    for (size_t idx = 0; idx < prog.size(); ++idx) {
      const int i = static_cast<int>(idx);
      const Instruction& ins = prog[idx];
      if (ins.kind == OpKind::kCommit) {
        if (idx + 1 != prog.size()) {
          violation("step dependency",
                    "stage {} commits at instruction {} but runs {} after it; commit must be the "
                    "last instruction (nothing of a step may run after its KV is committed)",
                    s, i, to_string(prog[idx + 1]));
        }
        if (ins.micro_batch != -1) {
          violation("plan shape", "stage {}'s commit names micro-batch {}; commit takes -1", s,
                    ins.micro_batch);
        }
        continue;
      }
      const auto found = mb_index_.find(ins.micro_batch);
      if (found == mb_index_.end()) {
        violation("plan shape",
                  "stage {} instruction {} is {} but the plan holds no micro-batch {}", s, i,
                  to_string(ins), ins.micro_batch);
      }
      Seen& mb = seen[found->second];
      const int32_t m = ins.micro_batch;
      switch (ins.kind) {
        case OpKind::kRecv:
          if (first) {
            violation("communication order",
                      "stage 0 instruction {} is {} but stage 0 has no incoming link (it embeds "
                      "the token ids itself); drop the receive",
                      i, to_string(ins));
          }
          if (mb.recv != kNone) {
            violation("communication order",
                      "stage {} receives micro-batch {} twice (instructions {} and {}); stage {} "
                      "sends it once",
                      s, m, mb.recv, i, s - 1);
          }
          mb.recv = i;
          break;
        case OpKind::kCompute:
          if (mb.compute != kNone) {
            violation("layer dependency",
                      "stage {} computes micro-batch {} twice (instructions {} and {}); each "
                      "stage applies its layers once per micro-batch",
                      s, m, mb.compute, i);
          }
          if (!first && mb.recv == kNone) {
            violation("layer dependency",
                      "stage {} computes micro-batch {} at instruction {} before receiving it "
                      "from stage {}; its layers need the previous layers' output for this step",
                      s, m, i, s - 1);
          }
          mb.compute = i;
          break;
        case OpKind::kSend:
          if (last) {
            violation("communication order",
                      "the last stage ({}) has {} at instruction {} but no outgoing link; "
                      "sample instead",
                      s, to_string(ins), i);
          }
          if (mb.compute == kNone) {
            violation("layer dependency",
                      "stage {} sends micro-batch {} at instruction {} before computing it; stage "
                      "{} would get activations without stage {}'s layers applied",
                      s, m, i, s + 1, s);
          }
          if (mb.send != kNone) {
            violation("communication order",
                      "stage {} sends micro-batch {} twice (instructions {} and {})", s, m, mb.send,
                      i);
          }
          mb.send = i;
          break;
        case OpKind::kSample:
          if (!last) {
            violation("sampling",
                      "stage {} has {} at instruction {} but only the last stage ({}) holds the "
                      "final norm and lm_head",
                      s, to_string(ins), i, last_stage());
          }
          if (mb.compute == kNone) {
            violation("layer dependency",
                      "stage {} samples micro-batch {} at instruction {} before computing it", s, m,
                      i);
          }
          if (mb.sample != kNone) {
            violation("sampling", "stage {} samples micro-batch {} twice (instructions {} and {})",
                      s, m, mb.sample, i);
          }
          mb.sample = i;
          break;
        case OpKind::kCommit:
          break;
      }
    }
    for (size_t k = 0; k < seen.size(); ++k) {
      const MicroBatch& mb = plan_.micro_batches[k];
      const Seen& at = seen[k];
      if (at.compute == kNone) {
        violation("layer dependency",
                  "stage {} never computes micro-batch {} (sequence {}); every micro-batch must "
                  "pass every stage in layer order, skipping a stage leaves its layers unapplied",
                  s, mb.id, mb.chunks.front().seq);
      }
      if (!last && at.send == kNone) {
        violation("layer dependency",
                  "stage {} computes micro-batch {} (sequence {}) but never sends it to stage {}",
                  s, mb.id, mb.chunks.front().seq, s + 1);
      }
      if (last && mb.has_sample() && at.sample == kNone) {
        const auto c = std::find_if(mb.chunks.begin(), mb.chunks.end(),
                                    [](const SeqChunk& x) { return x.sample; });
        violation("sampling",
                  "the last stage ({}) never samples micro-batch {}, whose chunk of sequence {} "
                  "must sample the token after position {}; add sample(m{}) after its compute",
                  s, mb.id, c->seq, c->end - 1, mb.id);
      }
    }
  }

  // On every stage a sequence's chunks run in position order, starting at its committed length:
  // a chunk attends to the KV of all earlier positions, which this stage must have written.
  void check_causal_order(int s) {
    std::vector<int64_t> next(plan_.seqs.size());
    for (size_t i = 0; i < plan_.seqs.size(); ++i)
      next[i] = plan_.seqs[i].committed;
    const std::vector<Instruction>& prog = program(s);
    for (size_t i = 0; i < prog.size(); ++i) {
      if (prog[i].kind != OpKind::kCompute) continue;
      const MicroBatch& mb = plan_.micro_batches[mb_index_.at(prog[i].micro_batch)];
      for (const SeqChunk& c : mb.chunks) {
        int64_t& expected = next[seq_index_.at(c.seq)];
        if (c.begin != expected) {
          violation("causal/KV order",
                    "stage {} computes positions [{},{}) of sequence {} (micro-batch {}, "
                    "instruction {}) before its positions [{},{}); a chunk attends to the KV of "
                    "every earlier position, so earlier chunks must run first on every stage",
                    s, c.begin, c.end, c.seq, mb.id, i, expected, c.begin);
        }
        expected = c.end;
      }
    }
  }

  // Runs all programs against links that hold at most link_capacity messages: Send blocks on a
  // full link, Recv(m) blocks until m is on its link, Commit waits for every stage. The
  // transport is FIFO (checked next); matching by micro-batch here keeps a pure capacity hang
  // distinguishable from an ordering mistake.
  void check_deadlock() {
    const int n = plan_.n_stages;
    const size_t capacity = static_cast<size_t>(options_.link_capacity);
    std::vector<size_t> pc(static_cast<size_t>(n), 0);
    std::vector<std::deque<int32_t>> links(static_cast<size_t>(n > 1 ? n - 1 : 0));
    auto at_commit = [&](int s) { return pc[static_cast<size_t>(s)] + 1 == program(s).size(); };
    bool progress = true;
    while (progress) {
      progress = false;
      for (int s = 0; s < n; ++s) {
        size_t& p = pc[static_cast<size_t>(s)];
        while (!at_commit(s)) {
          const Instruction& ins = program(s)[p];
          if (ins.kind == OpKind::kRecv) {
            std::deque<int32_t>& link = links[static_cast<size_t>(s - 1)];
            const auto it = std::find(link.begin(), link.end(), ins.micro_batch);
            if (it == link.end()) break;
            link.erase(it);
          } else if (ins.kind == OpKind::kSend) {
            std::deque<int32_t>& link = links[static_cast<size_t>(s)];
            if (link.size() >= capacity) break;
            link.push_back(ins.micro_batch);
          }
          ++p;
          progress = true;
        }
      }
    }
    bool done = true;
    for (int s = 0; s < n; ++s)
      done = done && at_commit(s);
    if (done) return;

    auto contents = [](const std::deque<int32_t>& link) {
      if (link.empty()) return std::string("nothing");
      std::string out;
      for (int32_t m : link)
        out += fmt::format("{}m{}", out.empty() ? "" : " ", m);
      return out;
    };
    std::string blocked;
    for (int s = 0; s < n; ++s) {
      const size_t p = pc[static_cast<size_t>(s)];
      const Instruction& ins = program(s)[p];
      if (!blocked.empty()) blocked += "; ";
      if (at_commit(s)) {
        blocked += fmt::format("stage {} waits at its commit", s);
      } else if (ins.kind == OpKind::kRecv) {
        blocked +=
            fmt::format("stage {} is blocked at instruction {} {}: link {}->{} holds {}", s, p,
                        to_string(ins), s - 1, s, contents(links[static_cast<size_t>(s - 1)]));
      } else {
        blocked += fmt::format(
            "stage {} is blocked at instruction {} {}: link {}->{} is full (holds {}, capacity {})",
            s, p, to_string(ins), s, s + 1, contents(links[static_cast<size_t>(s)]), capacity);
      }
    }
    violation("deadlock",
              "the stage programs cannot finish with links of capacity {}: {}; receive in the "
              "order the previous stage sends",
              capacity, blocked);
  }

  // The k-th Recv on stage s receives the k-th Send of stage s-1 (links are FIFO queues).
  void check_fifo_pairing() {
    for (int s = 1; s < plan_.n_stages; ++s) {
      std::vector<std::pair<int32_t, size_t>> sends;  // (micro-batch, instruction)
      std::vector<std::pair<int32_t, size_t>> recvs;
      for (size_t i = 0; i < program(s - 1).size(); ++i) {
        if (program(s - 1)[i].kind == OpKind::kSend)
          sends.emplace_back(program(s - 1)[i].micro_batch, i);
      }
      for (size_t i = 0; i < program(s).size(); ++i) {
        if (program(s)[i].kind == OpKind::kRecv) recvs.emplace_back(program(s)[i].micro_batch, i);
      }
      CONVEYOR_ASSERT(sends.size() == recvs.size());
      for (size_t k = 0; k < sends.size(); ++k) {
        if (sends[k].first != recvs[k].first) {
          violation("communication order",
                    "on link {}->{} send #{} of stage {} (instruction {}) carries micro-batch {} "
                    "but receive #{} of stage {} (instruction {}) expects micro-batch {}; links "
                    "deliver in FIFO order, so stage {} must receive in the order stage {} sends",
                    s - 1, s, k + 1, s - 1, sends[k].second, sends[k].first, k + 1, s,
                    recvs[k].second, recvs[k].first, s, s - 1);
        }
      }
    }
  }

  const StepPlan& plan_;
  const ValidateOptions& options_;
  std::unordered_map<int32_t, size_t> seq_index_;  // seq id -> index in plan.seqs
  std::unordered_map<int32_t, size_t> mb_index_;   // micro-batch id -> index in micro_batches
};

}  // namespace

void validate(const StepPlan& plan, const ValidateOptions& options) {
  Validator(plan, options).run();
}

}  // namespace conveyor
