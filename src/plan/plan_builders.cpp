// Plan builders: sequence grouping, token chunking and the standard per-stage programs for
// prefill and decode steps. Pure functions: the step's sequences in, a StepPlan out.
#include "plan/plan_builders.hpp"

#include <algorithm>
#include <limits>
#include <numeric>
#include <unordered_set>

#include "core/check.hpp"

namespace conveyor {

namespace {

void check_counts(std::string_view options, int n_stages, int n_micro_batches) {
  if (n_stages < 1) {
    fail(ErrorCode::kInvalidArgument, "{}::n_stages is {}; it must be at least 1", options,
         n_stages);
  }
  if (n_micro_batches < 0) {
    fail(ErrorCode::kInvalidArgument, "{}::n_micro_batches is {}; use >= 1, or 0 for the default",
         options, n_micro_batches);
  }
}

int resolve_groups(int n_micro_batches, size_t n_seqs, int default_groups) {
  const int requested = n_micro_batches > 0 ? n_micro_batches : default_groups;
  return static_cast<int>(std::min<size_t>(static_cast<size_t>(requested), n_seqs));
}

void check_seq_ids(const std::vector<int32_t>& ids, std::string_view phase) {
  if (ids.empty()) {
    fail(ErrorCode::kInvalidArgument, "a {} step needs at least one sequence but got none", phase);
  }
  std::unordered_set<int32_t> seen;
  for (int32_t id : ids) {
    if (id < 0) {
      fail(ErrorCode::kInvalidArgument,
           "sequence id {} in a {} step is negative; ids are engine slots >= 0", id, phase);
    }
    if (!seen.insert(id).second) {
      fail(ErrorCode::kInvalidArgument,
           "sequence {} appears twice in one {} step; pass each sequence once", id, phase);
    }
  }
}

void check_prefill_seqs(const std::vector<PrefillSeq>& seqs) {
  std::vector<int32_t> ids;
  for (const PrefillSeq& s : seqs)
    ids.push_back(s.seq);
  check_seq_ids(ids, "prefill");
  for (const PrefillSeq& s : seqs) {
    if (s.committed < 0) {
      fail(ErrorCode::kInvalidArgument, "sequence {} has committed KV length {}; it must be >= 0",
           s.seq, s.committed);
    }
    if (s.n_tokens < 1) {
      fail(ErrorCode::kInvalidArgument,
           "sequence {} brings {} new tokens to a prefill step; it needs at least 1 (leave it "
           "out of the step instead)",
           s.seq, s.n_tokens);
    }
  }
}

std::vector<SeqState> seq_states(const std::vector<PrefillSeq>& seqs) {
  std::vector<SeqState> out;
  out.reserve(seqs.size());
  for (const PrefillSeq& s : seqs)
    out.push_back(SeqState{s.seq, s.committed});
  return out;
}

std::vector<std::vector<size_t>> prefill_groups(const std::vector<PrefillSeq>& seqs,
                                                const PrefillPlanOptions& options) {
  std::vector<int64_t> weights;
  weights.reserve(seqs.size());
  for (const PrefillSeq& s : seqs)
    weights.push_back(s.n_tokens);
  // Default M = S: with fewer micro-batches than stages some stage idles even when the
  // pipeline is full.
  return balance_groups(weights,
                        resolve_groups(options.n_micro_batches, seqs.size(), options.n_stages));
}

int32_t next_id(size_t n_micro_batches) {
  if (n_micro_batches >= static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail(ErrorCode::kInvalidArgument,
         "the step would need more than {} micro-batches; raise PrefillPlanOptions::chunk_tokens",
         std::numeric_limits<int32_t>::max());
  }
  return static_cast<int32_t>(n_micro_batches);
}

StepPlan make_plan(int64_t step, Phase phase, int n_stages, std::vector<SeqState> seqs,
                   std::vector<MicroBatch> micro_batches, SampleRule rule) {
  StepPlan plan;
  plan.step = step;
  plan.phase = phase;
  plan.n_stages = n_stages;
  plan.seqs = std::move(seqs);
  plan.programs = build_programs(n_stages, micro_batches, rule);
  plan.micro_batches = std::move(micro_batches);
  return plan;
}

}  // namespace

void PrefillPlanOptions::validate() const {
  check_counts("PrefillPlanOptions", n_stages, n_micro_batches);
  if (chunk_tokens < 0) {
    fail(ErrorCode::kInvalidArgument,
         "PrefillPlanOptions::chunk_tokens is {}; use >= 1 to chunk prefill, or 0 for no "
         "chunking",
         chunk_tokens);
  }
}

void DecodePlanOptions::validate() const {
  check_counts("DecodePlanOptions", n_stages, n_micro_batches);
}

std::vector<std::vector<size_t>> balance_groups(const std::vector<int64_t>& weights, int n_groups) {
  if (n_groups < 1) {
    fail(ErrorCode::kInvalidArgument, "cannot split items into {} groups; use at least 1",
         n_groups);
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    if (weights[i] < 0) {
      fail(ErrorCode::kInvalidArgument, "item {} has negative weight {}", i, weights[i]);
    }
  }
  const size_t n = std::min(weights.size(), static_cast<size_t>(n_groups));
  std::vector<size_t> order(weights.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return weights[a] > weights[b]; });
  std::vector<std::vector<size_t>> groups(n);
  std::vector<int64_t> load(n, 0);
  for (size_t k = 0; k < order.size(); ++k) {
    // The first n items seed one group each, so no group stays empty (even with zero weights).
    const size_t g =
        k < n ? k : static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    groups[g].push_back(order[k]);
    load[g] += weights[order[k]];
  }
  for (auto& group : groups)
    std::sort(group.begin(), group.end());
  std::sort(groups.begin(), groups.end(),
            [](const auto& a, const auto& b) { return a.front() < b.front(); });
  return groups;
}

std::vector<int64_t> chunk_sizes(int64_t n_tokens, int64_t chunk_tokens) {
  if (n_tokens < 0 || chunk_tokens < 1) {
    fail(ErrorCode::kInvalidArgument,
         "cannot chunk {} tokens into chunks of {}; need n_tokens >= 0 and chunk_tokens >= 1",
         n_tokens, chunk_tokens);
  }
  const int64_t n_chunks = (n_tokens + chunk_tokens - 1) / chunk_tokens;
  std::vector<int64_t> sizes(static_cast<size_t>(n_chunks), 0);
  for (int64_t k = 0; k < n_chunks; ++k) {
    sizes[static_cast<size_t>(k)] = n_tokens / n_chunks + (k < n_tokens % n_chunks ? 1 : 0);
  }
  return sizes;
}

std::vector<std::vector<Instruction>> build_programs(int n_stages,
                                                     const std::vector<MicroBatch>& micro_batches,
                                                     SampleRule rule) {
  if (n_stages < 1) {
    fail(ErrorCode::kInvalidArgument, "cannot build programs for {} stages; use at least 1",
         n_stages);
  }
  std::vector<std::vector<Instruction>> programs(static_cast<size_t>(n_stages));
  for (int s = 0; s < n_stages; ++s) {
    std::vector<Instruction>& prog = programs[static_cast<size_t>(s)];
    prog.reserve(micro_batches.size() * 3 + 1);
    const bool last = s == n_stages - 1;
    for (const MicroBatch& mb : micro_batches) {
      if (s > 0) prog.push_back(Instruction{OpKind::kRecv, mb.id});
      prog.push_back(Instruction{OpKind::kCompute, mb.id});
      if (!last) {
        prog.push_back(Instruction{OpKind::kSend, mb.id});
      } else if (rule == SampleRule::kEveryMicroBatch || mb.has_sample()) {
        prog.push_back(Instruction{OpKind::kSample, mb.id});
      }
    }
    prog.push_back(Instruction{OpKind::kCommit, -1});
  }
  return programs;
}

StepPlan build_prefill_groups_plan(int64_t step, const std::vector<PrefillSeq>& seqs,
                                   const PrefillPlanOptions& options) {
  options.validate();
  check_prefill_seqs(seqs);
  std::vector<MicroBatch> micro_batches;
  for (const std::vector<size_t>& group : prefill_groups(seqs, options)) {
    MicroBatch mb{.id = next_id(micro_batches.size()), .step = step, .chunks = {}};
    for (size_t i : group) {
      const PrefillSeq& s = seqs[i];
      mb.chunks.push_back(SeqChunk{s.seq, s.committed, s.committed + s.n_tokens, s.sample});
    }
    micro_batches.push_back(std::move(mb));
  }
  return make_plan(step, Phase::kPrefill, options.n_stages, seq_states(seqs),
                   std::move(micro_batches), options.sample_rule);
}

StepPlan build_prefill_chunks_plan(int64_t step, const std::vector<PrefillSeq>& seqs,
                                   const PrefillPlanOptions& options) {
  options.validate();
  if (options.chunk_tokens < 1) {
    fail(ErrorCode::kInvalidArgument,
         "build_prefill_chunks_plan needs PrefillPlanOptions::chunk_tokens >= 1 but it is {}; use "
         "build_prefill_groups_plan for unchunked prefill",
         options.chunk_tokens);
  }
  check_prefill_seqs(seqs);
  // Chunk boundaries of every sequence: sequence i's chunk r is [bounds[i][r], bounds[i][r+1]).
  std::vector<std::vector<int64_t>> bounds(seqs.size());
  size_t n_rounds = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    int64_t pos = seqs[i].committed;
    bounds[i].push_back(pos);
    for (int64_t size : chunk_sizes(seqs[i].n_tokens, options.chunk_tokens)) {
      pos += size;
      bounds[i].push_back(pos);
    }
    n_rounds = std::max(n_rounds, bounds[i].size() - 1);
  }
  const std::vector<std::vector<size_t>> groups = prefill_groups(seqs, options);
  std::vector<MicroBatch> micro_batches;
  for (size_t r = 0; r < n_rounds; ++r) {
    for (const std::vector<size_t>& group : groups) {
      MicroBatch mb{.id = 0, .step = step, .chunks = {}};
      for (size_t i : group) {
        const std::vector<int64_t>& b = bounds[i];
        if (r + 1 >= b.size()) continue;  // this sequence has fewer chunks
        const bool final_chunk = r + 2 == b.size();
        mb.chunks.push_back(SeqChunk{seqs[i].seq, b[r], b[r + 1], final_chunk && seqs[i].sample});
      }
      if (mb.chunks.empty()) continue;
      mb.id = next_id(micro_batches.size());
      micro_batches.push_back(std::move(mb));
    }
  }
  return make_plan(step, Phase::kPrefill, options.n_stages, seq_states(seqs),
                   std::move(micro_batches), options.sample_rule);
}

StepPlan build_prefill_plan(int64_t step, const std::vector<PrefillSeq>& seqs,
                            const PrefillPlanOptions& options) {
  return options.chunk_tokens > 0 ? build_prefill_chunks_plan(step, seqs, options)
                                  : build_prefill_groups_plan(step, seqs, options);
}

StepPlan build_decode_plan(int64_t step, const std::vector<SeqState>& seqs,
                           const DecodePlanOptions& options) {
  options.validate();
  std::vector<int32_t> ids;
  for (const SeqState& s : seqs)
    ids.push_back(s.seq);
  check_seq_ids(ids, "decode");
  for (const SeqState& s : seqs) {
    if (s.committed < 0) {
      fail(ErrorCode::kInvalidArgument, "sequence {} has committed KV length {}; it must be >= 0",
           s.seq, s.committed);
    }
  }
  // Every sequence costs one token; attention over longer contexts costs more, which a cost
  // model may later balance. For now: contiguous groups of near-equal size, input order kept.
  const size_t n_groups =
      static_cast<size_t>(resolve_groups(options.n_micro_batches, seqs.size(), options.n_stages));
  std::vector<MicroBatch> micro_batches;
  size_t next = 0;
  for (size_t g = 0; g < n_groups; ++g) {
    const size_t size = seqs.size() / n_groups + (g < seqs.size() % n_groups ? 1 : 0);
    MicroBatch mb{.id = next_id(micro_batches.size()), .step = step, .chunks = {}};
    for (size_t k = 0; k < size; ++k, ++next) {
      const SeqState& s = seqs[next];
      mb.chunks.push_back(SeqChunk{s.seq, s.committed, s.committed + 1, true});
    }
    micro_batches.push_back(std::move(mb));
  }
  return make_plan(step, Phase::kDecode, options.n_stages, seqs, std::move(micro_batches),
                   SampleRule::kWhereChunksSample);
}

}  // namespace conveyor
