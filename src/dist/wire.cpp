// Encoding and decoding of the cross-process pipeline's messages.
#include "dist/wire.hpp"

#include <cstring>

#include "core/check.hpp"

namespace conveyor::wire {
namespace {

void put_plan(Writer& w, const StepPlan& plan) {
  w.put(plan.step);
  w.put(static_cast<uint8_t>(plan.phase));
  w.put(static_cast<int32_t>(plan.n_stages));
  w.put(plan.cohort);
  w.put(static_cast<uint64_t>(plan.seqs.size()));
  for (const SeqState& s : plan.seqs) {
    w.put(s.seq);
    w.put(s.committed);
  }
  w.put(static_cast<uint64_t>(plan.micro_batches.size()));
  for (const MicroBatch& mb : plan.micro_batches) {
    w.put(mb.id);
    w.put(mb.step);
    w.put(static_cast<uint64_t>(mb.chunks.size()));
    for (const SeqChunk& c : mb.chunks) {
      w.put(c.seq);
      w.put(c.begin);
      w.put(c.end);
      w.put(static_cast<uint8_t>(c.sample));
    }
  }
  w.put(static_cast<uint64_t>(plan.programs.size()));
  for (const std::vector<Instruction>& program : plan.programs) {
    w.put(static_cast<uint64_t>(program.size()));
    for (const Instruction& ins : program) {
      w.put(static_cast<uint8_t>(ins.kind));
      w.put(ins.micro_batch);
    }
  }
}

// A count of elements of at least `min_bytes` each: refuses counts the message cannot hold.
uint64_t get_count(Reader& r, size_t min_bytes, size_t left) {
  const auto n = r.get<uint64_t>();
  if (min_bytes > 0 && n > left / min_bytes) {
    fail(ErrorCode::kCommunication, "malformed pipeline message: a count of {} does not fit", n);
  }
  return n;
}

template <typename E>
E get_enum(Reader& r, uint8_t max) {
  const auto v = r.get<uint8_t>();
  if (v > max) fail(ErrorCode::kCommunication, "malformed pipeline message: enum value {}", v);
  return static_cast<E>(v);
}

StepPlan get_plan(Reader& r, size_t size) {
  StepPlan plan;
  plan.step = r.get<int64_t>();
  plan.phase = get_enum<Phase>(r, static_cast<uint8_t>(Phase::kDecode));
  plan.n_stages = r.get<int32_t>();
  plan.cohort = r.get<int32_t>();
  plan.seqs.resize(get_count(r, 12, size));
  for (SeqState& s : plan.seqs) {
    s.seq = r.get<int32_t>();
    s.committed = r.get<int64_t>();
  }
  plan.micro_batches.resize(get_count(r, 20, size));
  for (MicroBatch& mb : plan.micro_batches) {
    mb.id = r.get<int32_t>();
    mb.step = r.get<int64_t>();
    mb.chunks.resize(get_count(r, 21, size));
    for (SeqChunk& c : mb.chunks) {
      c.seq = r.get<int32_t>();
      c.begin = r.get<int64_t>();
      c.end = r.get<int64_t>();
      c.sample = r.get<uint8_t>() != 0;
    }
  }
  plan.programs.resize(get_count(r, 8, size));
  for (std::vector<Instruction>& program : plan.programs) {
    program.resize(get_count(r, 5, size));
    for (Instruction& ins : program) {
      ins.kind = get_enum<OpKind>(r, static_cast<uint8_t>(OpKind::kCommit));
      ins.micro_batch = r.get<int32_t>();
    }
  }
  return plan;
}

}  // namespace

void Writer::append(const void* data, size_t n) {
  const size_t at = bytes_.size();
  bytes_.resize(at + n);
  if (n > 0) std::memcpy(bytes_.data() + at, data, n);
}

void Writer::put_string(const std::string& s) {
  put(static_cast<uint64_t>(s.size()));
  append(s.data(), s.size());
}

void Writer::put_floats(std::span<const float> values) {
  put(static_cast<uint64_t>(values.size()));
  append(values.data(), values.size_bytes());
}

void Reader::copy(void* out, size_t n) {
  if (n > bytes_.size() - at_) {
    fail(ErrorCode::kCommunication,
         "malformed pipeline message: needs {} more bytes at offset {} of {}", n, at_,
         bytes_.size());
  }
  std::memcpy(out, bytes_.data() + at_, n);
  at_ += n;
}

std::string Reader::get_string() {
  const uint64_t n = get_count(*this, 1, bytes_.size() - at_);
  std::string s(n, '\0');
  copy(s.data(), n);
  return s;
}

std::vector<float> Reader::get_floats() {
  const uint64_t n = get_count(*this, sizeof(float), bytes_.size() - at_);
  std::vector<float> v(n);
  copy(v.data(), n * sizeof(float));
  return v;
}

void Reader::finish() const {
  if (at_ != bytes_.size()) {
    fail(ErrorCode::kCommunication, "malformed pipeline message: {} bytes left over of {}",
         bytes_.size() - at_, bytes_.size());
  }
}

std::vector<std::byte> encode_submit(uint64_t ticket, const StepPlan& plan,
                                     const StepContext& ctx) {
  Writer w;
  w.put(ControlKind::kSubmit);
  w.put(ticket);
  put_plan(w, plan);
  w.put(static_cast<uint8_t>(ctx.record_trace));
  w.put(static_cast<uint8_t>(!ctx.logits.empty()));
  // Only the plan's slots: the other entries belong to steps this one does not touch.
  for (const SeqState& s : plan.seqs) {
    const auto slot = static_cast<size_t>(s.seq);
    const SamplingParams p = slot < ctx.sampling.size() ? ctx.sampling[slot] : SamplingParams{};
    w.put(p.temperature);
    w.put(p.top_k);
    w.put(p.top_p);
    w.put(p.seed);
    w.put(ctx.capture(s.seq));
  }
  return w.take();
}

std::vector<std::byte> encode_decide(uint64_t ticket, bool commit) {
  Writer w;
  w.put(ControlKind::kDecide);
  w.put(ticket);
  w.put(static_cast<uint8_t>(commit));
  return w.take();
}

std::vector<std::byte> encode_truncate(int32_t seq, int64_t length) {
  Writer w;
  w.put(ControlKind::kTruncate);
  w.put(seq);
  w.put(length);
  return w.take();
}

std::vector<std::byte> encode_release(int32_t seq) {
  Writer w;
  w.put(ControlKind::kRelease);
  w.put(seq);
  return w.take();
}

std::vector<std::byte> encode_signal(ControlKind kind) {
  CONVEYOR_ASSERT(kind == ControlKind::kCancel || kind == ControlKind::kReset ||
                  kind == ControlKind::kStop);
  Writer w;
  w.put(kind);
  return w.take();
}

Control decode_control(std::span<const std::byte> bytes) {
  Reader r(bytes);
  Control c;
  c.kind = get_enum<ControlKind>(r, static_cast<uint8_t>(ControlKind::kStop));
  switch (c.kind) {
    case ControlKind::kSubmit: {
      SubmittedStep& s = c.submit;
      s.ticket = r.get<uint64_t>();
      s.plan = get_plan(r, bytes.size());
      const bool record_trace = r.get<uint8_t>() != 0;
      const bool any_logits = r.get<uint8_t>() != 0;
      int32_t max_slot = -1;
      for (const SeqState& q : s.plan.seqs) {
        if (q.seq < 0 || q.seq > (1 << 20)) {
          fail(ErrorCode::kCommunication, "malformed pipeline message: sequence slot {}", q.seq);
        }
        max_slot = std::max(max_slot, q.seq);
      }
      s.sampling.resize(static_cast<size_t>(max_slot + 1));
      if (any_logits) s.logits.resize(static_cast<size_t>(max_slot + 1), LogitsCapture::kNone);
      for (const SeqState& q : s.plan.seqs) {
        SamplingParams& p = s.sampling[static_cast<size_t>(q.seq)];
        p.temperature = r.get<double>();
        p.top_k = r.get<int64_t>();
        p.top_p = r.get<double>();
        p.seed = r.get<uint64_t>();
        const auto capture = get_enum<LogitsCapture>(r, static_cast<uint8_t>(LogitsCapture::kAll));
        if (any_logits) s.logits[static_cast<size_t>(q.seq)] = capture;
      }
      s.ctx = StepContext{.sampling = s.sampling, .logits = s.logits, .record_trace = record_trace};
      break;
    }
    case ControlKind::kDecide:
      c.ticket = r.get<uint64_t>();
      c.commit = r.get<uint8_t>() != 0;
      break;
    case ControlKind::kTruncate:
      c.seq = r.get<int32_t>();
      c.length = r.get<int64_t>();
      break;
    case ControlKind::kRelease:
      c.seq = r.get<int32_t>();
      break;
    case ControlKind::kCancel:
    case ControlKind::kReset:
    case ControlKind::kStop:
      break;
  }
  r.finish();
  return c;
}

std::vector<std::byte> encode_report(const StepReport& report) {
  Writer w;
  w.put(static_cast<int32_t>(report.rank));
  w.put(report.ticket);
  w.put(report.step);
  w.put(static_cast<int32_t>(report.first_stage));
  w.put(static_cast<int32_t>(report.n_stages));
  w.put(static_cast<uint64_t>(report.failures.size()));
  for (const StepReport::Failure& f : report.failures) {
    w.put(static_cast<int32_t>(f.stage));
    w.put(static_cast<int32_t>(f.code));
    w.put_string(f.message);
  }
  w.put(static_cast<uint8_t>(report.result.has_value()));
  if (report.result) {
    w.put(static_cast<uint64_t>(report.result->tokens.size()));
    for (const SampledToken& t : report.result->tokens) {
      w.put(t.seq);
      w.put(t.position);
      w.put(t.token);
    }
    w.put(static_cast<uint64_t>(report.result->logits.size()));
    for (const LogitsRow& row : report.result->logits) {
      w.put(row.seq);
      w.put(row.position);
      w.put_floats(row.values);
    }
  }
  w.put(static_cast<uint64_t>(report.busy_ns.size()));
  for (int64_t ns : report.busy_ns)
    w.put(ns);
  w.put(static_cast<uint64_t>(report.trace.size()));
  for (const TraceEvent& e : report.trace) {
    w.put(static_cast<int32_t>(e.stage));
    w.put(static_cast<uint8_t>(e.kind));
    w.put(e.micro_batch);
    w.put(e.step);
    w.put(static_cast<uint8_t>(e.phase));
    w.put(e.n_tokens);
    w.put(e.start_us);
    w.put(e.end_us);
  }
  w.put(static_cast<uint8_t>(report.links_cancelled));
  w.put_string(report.broken);
  return w.take();
}

StepReport decode_report(std::span<const std::byte> bytes) {
  Reader r(bytes);
  const size_t size = bytes.size();
  StepReport report;
  report.rank = r.get<int32_t>();
  report.ticket = r.get<uint64_t>();
  report.step = r.get<int64_t>();
  report.first_stage = r.get<int32_t>();
  report.n_stages = r.get<int32_t>();
  if (report.first_stage < 0 || report.n_stages < 0 || report.n_stages > (1 << 16)) {
    fail(ErrorCode::kCommunication, "malformed pipeline report: stages [{}, +{})",
         report.first_stage, report.n_stages);
  }
  report.failures.resize(get_count(r, 16, size));
  for (StepReport::Failure& f : report.failures) {
    f.stage = r.get<int32_t>();
    const auto code = r.get<int32_t>();
    if (code < 0 || code > static_cast<int32_t>(ErrorCode::kInternal)) {
      fail(ErrorCode::kCommunication, "malformed pipeline report: error code {}", code);
    }
    f.code = static_cast<ErrorCode>(code);
    f.message = r.get_string();
    if (f.stage < report.first_stage || f.stage >= report.first_stage + report.n_stages) {
      fail(ErrorCode::kCommunication, "malformed pipeline report: a failure of stage {}", f.stage);
    }
  }
  if (r.get<uint8_t>() != 0) {
    StepResult& result = report.result.emplace();
    result.tokens.resize(get_count(r, 16, size));
    for (SampledToken& t : result.tokens) {
      t.seq = r.get<int32_t>();
      t.position = r.get<int64_t>();
      t.token = r.get<int32_t>();
    }
    result.logits.resize(get_count(r, 20, size));
    for (LogitsRow& row : result.logits) {
      row.seq = r.get<int32_t>();
      row.position = r.get<int64_t>();
      row.values = r.get_floats();
    }
  }
  report.busy_ns.resize(get_count(r, 8, size));
  for (int64_t& ns : report.busy_ns)
    ns = r.get<int64_t>();
  report.trace.resize(get_count(r, 42, size));
  for (TraceEvent& e : report.trace) {
    e.stage = r.get<int32_t>();
    e.kind = get_enum<OpKind>(r, static_cast<uint8_t>(OpKind::kCommit));
    e.micro_batch = r.get<int32_t>();
    e.step = r.get<int64_t>();
    e.phase = get_enum<Phase>(r, static_cast<uint8_t>(Phase::kDecode));
    e.n_tokens = r.get<int64_t>();
    e.start_us = r.get<double>();
    e.end_us = r.get<double>();
  }
  report.links_cancelled = r.get<uint8_t>() != 0;
  report.broken = r.get_string();
  r.finish();
  return report;
}

}  // namespace conveyor::wire
