// StepPlan value types: token counts, names of phases and instructions, describe().
#include "conveyor/step_plan.hpp"

#include <iterator>

#include <fmt/format.h>

namespace conveyor {

int64_t MicroBatch::n_tokens() const {
  int64_t n = 0;
  for (const SeqChunk& c : chunks)
    n += c.n_tokens();
  return n;
}

bool MicroBatch::has_sample() const {
  for (const SeqChunk& c : chunks) {
    if (c.sample) return true;
  }
  return false;
}

int64_t StepPlan::n_tokens() const {
  int64_t n = 0;
  for (const MicroBatch& mb : micro_batches)
    n += mb.n_tokens();
  return n;
}

void StepPlan::validate(const ValidateOptions& options) const {
  conveyor::validate(*this, options);
}

std::string_view to_string(Phase phase) {
  switch (phase) {
    case Phase::kPrefill:
      return "prefill";
    case Phase::kDecode:
      return "decode";
  }
  return "?";
}

std::string_view to_string(OpKind kind) {
  switch (kind) {
    case OpKind::kRecv:
      return "recv";
    case OpKind::kCompute:
      return "compute";
    case OpKind::kSend:
      return "send";
    case OpKind::kSample:
      return "sample";
    case OpKind::kCommit:
      return "commit";
  }
  return "?";
}

std::string to_string(const Instruction& instruction) {
  if (instruction.kind == OpKind::kCommit && instruction.micro_batch < 0) return "commit";
  return fmt::format("{}(m{})", to_string(instruction.kind), instruction.micro_batch);
}

std::string StepPlan::describe() const {
  std::string out;
  auto it = std::back_inserter(out);
  fmt::format_to(it, "step {} {}{}: {} stages, {} sequences, {} micro-batches, {} tokens\n", step,
                 to_string(phase), cohort != 0 ? fmt::format(" (cohort {})", cohort) : "", n_stages,
                 seqs.size(), micro_batches.size(), n_tokens());
  for (const SeqState& s : seqs) {
    fmt::format_to(it, "  seq {}: committed {}\n", s.seq, s.committed);
  }
  for (const MicroBatch& mb : micro_batches) {
    fmt::format_to(it, "  m{} (step {}, {} tokens):", mb.id, mb.step, mb.n_tokens());
    for (const SeqChunk& c : mb.chunks) {
      fmt::format_to(it, " seq {} [{},{}){}", c.seq, c.begin, c.end, c.sample ? " sample" : "");
    }
    out += '\n';
  }
  for (size_t s = 0; s < programs.size(); ++s) {
    fmt::format_to(it, "  stage {}:", s);
    for (const Instruction& ins : programs[s])
      fmt::format_to(it, " {}", to_string(ins));
    out += '\n';
  }
  return out;
}

}  // namespace conveyor
