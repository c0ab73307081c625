// SchedulePolicy: chunking, micro-batch counts, cohorts and per-step prompt budgets, and the
// plans they give. Pure functions; the Engine, simulator and tools all plan through here.
#include "conveyor/schedule.hpp"

#include <algorithm>
#include <charconv>
#include <optional>

#include "core/check.hpp"
#include "plan/plan_builders.hpp"

namespace conveyor {

Chunking Chunking::parse(std::string_view text) {
  if (text == "auto") return automatic();
  if (text == "never") return never();
  int64_t tokens = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, tokens);
  if (ec != std::errc() || ptr != end || tokens < 1) {
    fail(ErrorCode::kInvalidArgument,
         "chunking \"{}\" is not understood; use \"auto\", \"never\" or a chunk size in tokens "
         ">= 1 (e.g. 256)",
         text);
  }
  return fixed(tokens);
}

std::string Chunking::to_string() const {
  switch (mode) {
    case ChunkMode::kAuto:
      return "auto";
    case ChunkMode::kNever:
      return "never";
    case ChunkMode::kFixed:
      break;
  }
  return std::to_string(tokens);
}

std::string_view to_string(DecodeMode mode) {
  return mode == DecodeMode::kStrict ? "strict" : "cohorts";
}

DecodeMode parse_decode_mode(std::string_view text) {
  if (text == "strict") return DecodeMode::kStrict;
  if (text == "cohorts") return DecodeMode::kCohorts;
  fail(ErrorCode::kInvalidArgument,
       "decode mode \"{}\" is not known; use \"strict\" or \"cohorts\"", text);
}

void SchedulePolicy::validate() const {
  if (prefill_micro_batches < 0 || decode_micro_batches < 0) {
    fail(ErrorCode::kInvalidArgument,
         "micro-batch counts must be >= 0 (0 picks the default); got prefill {} and decode {}",
         prefill_micro_batches, decode_micro_batches);
  }
  if (chunking.mode == ChunkMode::kFixed ? chunking.tokens < 1 : chunking.tokens != 0) {
    fail(ErrorCode::kInvalidArgument,
         "chunking {} with {} tokens: a fixed chunk size must be >= 1 and only a fixed chunking "
         "has one (Chunking::fixed(n), \"auto\" or \"never\")",
         chunking.mode == ChunkMode::kFixed ? "fixed" : chunking.to_string(), chunking.tokens);
  }
  if (cohorts < 0) {
    fail(ErrorCode::kInvalidArgument,
         "cohorts is {} but must be >= 0 (0: one per stage in cohort decode mode)", cohorts);
  }
}

namespace {

// The size a chunking fixes (0: never chunk); nothing when it is automatic.
std::optional<int64_t> fixed_size(const Chunking& chunking) {
  if (chunking.mode == ChunkMode::kAuto) return std::nullopt;
  return chunking.mode == ChunkMode::kFixed ? chunking.tokens : 0;
}

}  // namespace

int64_t prefill_chunk_tokens(const SchedulePolicy& policy, int n_stages,
                             std::span<const int64_t> new_tokens) {
  if (const std::optional<int64_t> size = fixed_size(policy.chunking)) return *size;
  const int64_t micro =
      policy.prefill_micro_batches > 0 ? policy.prefill_micro_batches : std::max(n_stages, 1);
  const auto n = static_cast<int64_t>(new_tokens.size());
  if (n == 0 || n >= micro) return 0;
  const int64_t longest = *std::max_element(new_tokens.begin(), new_tokens.end());
  const int64_t rounds = (micro + n - 1) / n;
  const int64_t chunk =
      std::max(SchedulePolicy::kMinAutoChunkTokens, (longest + rounds - 1) / rounds);
  return chunk >= longest ? 0 : chunk;
}

int64_t step_prompt_budget(const SchedulePolicy& policy) {
  return fixed_size(policy.chunking).value_or(SchedulePolicy::kAutoStepPromptTokens);
}

int cohort_count(const SchedulePolicy& policy, int n_stages, int64_t n_running) {
  if (policy.decode_mode == DecodeMode::kStrict) return 1;
  const int wanted = policy.cohorts > 0 ? policy.cohorts : n_stages;
  return static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({wanted, n_stages, std::max<int64_t>(n_running, 1)})));
}

StepPlan plan_step(const SchedulePolicy& policy, int n_stages, int64_t step,
                   const std::vector<SeqWork>& work, LogitsRows logits, int32_t cohort) {
  policy.validate();
  const bool strict = policy.decode_mode == DecodeMode::kStrict;
  // Decode micro-batches: strict fills the pipeline with one step's groups; a cohort's step is
  // one group by default, the other cohorts filling the pipeline.
  const int decode_m = policy.decode_micro_batches > 0 ? policy.decode_micro_batches
                       : strict                        ? n_stages
                                                       : 1;
  const bool decodes_only =
      std::none_of(work.begin(), work.end(), [](const SeqWork& w) { return w.prompt; });
  for (const SeqWork& w : work) {
    if (!w.prompt && (w.n_tokens != 1 || !w.sample)) {
      fail(ErrorCode::kInvalidArgument,
           "sequence {} decodes {} token(s){}; a decode is one token that samples (mark prompt "
           "shares with SeqWork::prompt)",
           w.seq, w.n_tokens, w.sample ? "" : " without sampling");
    }
  }
  StepPlan plan;
  // Every decode samples, so every decode micro-batch has a Sample whatever `logits` asks.
  if (decodes_only) {
    std::vector<SeqState> seqs;
    for (const SeqWork& w : work)
      seqs.push_back({w.seq, w.committed});
    plan = build_decode_plan(step, seqs, {.n_stages = n_stages, .n_micro_batches = decode_m});
  } else {
    std::vector<PrefillSeq> seqs;
    std::vector<int64_t> prompt_tokens;
    bool with_decodes = false;
    for (const SeqWork& w : work) {
      seqs.push_back({w.seq, w.committed, w.n_tokens, w.sample});
      if (w.prompt) {
        prompt_tokens.push_back(w.n_tokens);
      } else {
        with_decodes = true;
      }
    }
    // A step of prompts alone is micro-batched (and chunked) to fill the pipeline; prompt
    // shares that ride along with decodes were already bounded by the step budget.
    PrefillPlanOptions options{
        .n_stages = n_stages,
        .n_micro_batches = with_decodes ? decode_m : policy.prefill_micro_batches,
        .chunk_tokens = with_decodes ? 0 : prefill_chunk_tokens(policy, n_stages, prompt_tokens),
        .sample_rule = logits == LogitsRows::kAll ? SampleRule::kEveryMicroBatch
                                                  : SampleRule::kWhereChunksSample};
    plan = build_prefill_plan(step, seqs, options);
  }
  plan.cohort = cohort;
  return plan;
}

std::vector<SeqWork> step_work(const SchedulePolicy& policy, const std::vector<SeqState>& decoding,
                               const std::vector<PromptProgress>& prompts) {
  std::vector<SeqWork> work;
  for (const SeqState& s : decoding)
    work.push_back({.seq = s.seq, .committed = s.committed});
  const int64_t budget = decoding.empty() ? 0 : step_prompt_budget(policy);
  int64_t left = budget;
  for (const PromptProgress& p : prompts) {
    const int64_t remaining = p.prompt - p.done;
    if (remaining < 1) {
      fail(ErrorCode::kInvalidArgument,
           "prompt of sequence {} has {} of {} tokens done and none left to compute; a prompt "
           "always computes at least its last token",
           p.seq, p.done, p.prompt);
    }
    const int64_t take = budget == 0 ? remaining : std::min(remaining, left);
    if (take == 0) break;
    work.push_back({.seq = p.seq,
                    .committed = p.done,
                    .n_tokens = take,
                    .sample = p.done + take == p.prompt,
                    .prompt = true});
    left -= take;
  }
  return work;
}

int pick_cohort(std::span<const int64_t> sizes) {
  if (sizes.empty()) fail(ErrorCode::kInvalidArgument, "pick_cohort needs at least one cohort");
  return static_cast<int>(std::min_element(sizes.begin(), sizes.end()) - sizes.begin());
}

}  // namespace conveyor
