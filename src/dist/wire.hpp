// The messages of a pipeline that spans processes, as bytes: the leader's control messages
// (step plans with what their stages need of the step's context, decisions, slot changes) and
// the followers' reports. Every process runs the same build on the same architecture (checked
// when the engine opens), so numbers travel in native byte order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "backend/stage_backend.hpp"
#include "conveyor/sampling.hpp"
#include "conveyor/step_plan.hpp"
#include "runtime/remote.hpp"

namespace conveyor::wire {

enum class ControlKind : uint8_t {
  kSubmit = 1,
  kDecide,
  kTruncate,
  kRelease,
  kCancel,
  kReset,
  kStop
};

// A step as a follower receives it; `ctx` points into the vectors beside it.
struct SubmittedStep {
  uint64_t ticket = 0;
  StepPlan plan;
  std::vector<SamplingParams> sampling;  // by sequence slot (the plan's slots are set)
  std::vector<LogitsCapture> logits;     // by sequence slot, or empty
  StepContext ctx;                       // without tokens: only stage 0 embeds
};

struct Control {
  ControlKind kind = ControlKind::kStop;
  SubmittedStep submit;  // kSubmit
  uint64_t ticket = 0;   // kDecide
  bool commit = false;   // kDecide
  int32_t seq = -1;      // kTruncate, kRelease
  int64_t length = 0;    // kTruncate
};

std::vector<std::byte> encode_submit(uint64_t ticket, const StepPlan& plan, const StepContext& ctx);
std::vector<std::byte> encode_decide(uint64_t ticket, bool commit);
std::vector<std::byte> encode_truncate(int32_t seq, int64_t length);
std::vector<std::byte> encode_release(int32_t seq);
// A message that is its kind alone: kCancel, kReset, kStop.
std::vector<std::byte> encode_signal(ControlKind kind);
// Throws conveyor::Error(kCommunication) naming what is malformed.
Control decode_control(std::span<const std::byte> bytes);

std::vector<std::byte> encode_report(const StepReport& report);
StepReport decode_report(std::span<const std::byte> bytes);

// Appends and reads plain values and length-prefixed sequences.
class Writer {
 public:
  template <typename T>
  void put(const T& value) {
    append(&value, sizeof(T));
  }
  void put_string(const std::string& s);
  void put_floats(std::span<const float> values);
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  void append(const void* data, size_t n);
  std::vector<std::byte> bytes_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  template <typename T>
  T get() {
    T value;
    copy(&value, sizeof(T));
    return value;
  }
  std::string get_string();
  std::vector<float> get_floats();
  // Throws when bytes are left over (a message of another version).
  void finish() const;

 private:
  void copy(void* out, size_t n);
  std::span<const std::byte> bytes_;
  size_t at_ = 0;
};

}  // namespace conveyor::wire
