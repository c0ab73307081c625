// FaultInjector and its stage and link decorators.
#include "common/faults.hpp"

#include "core/check.hpp"

namespace conveyor::test {
namespace {

class FaultyStage final : public StageBackend {
 public:
  FaultyStage(std::shared_ptr<FaultInjector> faults, int stage, std::unique_ptr<StageBackend> inner)
      : faults_(std::move(faults)), stage_(stage), inner_(std::move(inner)) {}

  std::string describe() const override { return inner_->describe(); }
  void compute(const MicroBatch& mb, const StepContext& ctx, Activations& activations) override {
    faults_->before(stage_, mb.step);
    inner_->compute(mb, ctx, activations);
  }
  void sample(const MicroBatch& mb, const StepContext& ctx, const Activations& activations,
              std::vector<SampledToken>& tokens, std::vector<LogitsRow>& logits) override {
    faults_->before(stage_, mb.step);
    inner_->sample(mb, ctx, activations, tokens, logits);
  }
  void commit(int64_t step, std::span<const int32_t> seqs) override {
    faults_->before_commit(stage_, step);
    inner_->commit(step, seqs);
  }
  void rollback(std::span<const int32_t> seqs) override { inner_->rollback(seqs); }
  void truncate(int32_t seq, int64_t length) override { inner_->truncate(seq, length); }
  int64_t committed(int32_t seq) const override { return inner_->committed(seq); }

 private:
  std::shared_ptr<FaultInjector> faults_;
  int stage_;
  std::unique_ptr<StageBackend> inner_;
};

// Link `from` -> from + 1: sends are instructions of stage `from`, receives of stage from + 1.
class FaultyLink final : public Link {
 public:
  FaultyLink(std::shared_ptr<FaultInjector> faults, int from, std::unique_ptr<Link> inner)
      : faults_(std::move(faults)), from_(from), inner_(std::move(inner)) {}

  void send(LinkMessage&& message, std::chrono::milliseconds timeout) override {
    faults_->before(from_, message.step);
    inner_->send(std::move(message), timeout);
  }
  LinkMessage recv(std::chrono::milliseconds timeout) override {
    LinkMessage message = inner_->recv(timeout);  // the step is known once the message is here
    faults_->before(from_ + 1, message.step);
    return message;
  }
  void cancel() override { inner_->cancel(); }
  void reset() override { inner_->reset(); }

 private:
  std::shared_ptr<FaultInjector> faults_;
  int from_;
  std::unique_ptr<Link> inner_;
};

}  // namespace

std::shared_ptr<FaultInjector> FaultInjector::create(FaultPlan plan) {
  return std::shared_ptr<FaultInjector>(new FaultInjector(plan));
}

void FaultInjector::set(FaultPlan plan) {
  std::lock_guard lock(mutex_);
  plan_ = plan;
  counts_.clear();
}

void FaultInjector::before(int stage, int64_t step) {
  std::lock_guard lock(mutex_);
  Count& count = counts_[stage];
  if (count.step != step) count = Count{step, 0};
  const int instruction = count.next++;
  if (!plan_.commit && plan_.stage == stage && plan_.instruction == instruction &&
      (plan_.step < 0 || plan_.step == step)) {
    fail(ErrorCode::kInternal, "injected fault");
  }
}

void FaultInjector::before_commit(int stage, int64_t step) {
  std::lock_guard lock(mutex_);
  if (plan_.commit && plan_.stage == stage && (plan_.step < 0 || plan_.step == step)) {
    fail(ErrorCode::kInternal, "injected commit fault");
  }
}

std::unique_ptr<StageBackend> FaultInjector::wrap_stage(int stage,
                                                        std::unique_ptr<StageBackend> inner) {
  return std::make_unique<FaultyStage>(shared_from_this(), stage, std::move(inner));
}

std::unique_ptr<Link> FaultInjector::wrap_link(int from, std::unique_ptr<Link> inner) {
  return std::make_unique<FaultyLink>(shared_from_this(), from, std::move(inner));
}

detail::EngineHooks FaultInjector::hooks() {
  auto self = shared_from_this();
  return detail::EngineHooks{.wrap_stage =
                                 [self](int stage, std::unique_ptr<StageBackend> inner) {
                                   return self->wrap_stage(stage, std::move(inner));
                                 },
                             .wrap_link =
                                 [self](int from, std::unique_ptr<Link> inner) {
                                   return self->wrap_link(from, std::move(inner));
                                 }};
}

}  // namespace conveyor::test
