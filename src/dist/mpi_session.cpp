// MPI: the world, an engine's communicator and its polled waits, the link between processes,
// the leader's view of the followers and the followers' loop.
#include "dist/mpi_session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <climits>
#include <map>
#include <mutex>
#include <thread>

#include "core/check.hpp"
#include "dist/distributed.hpp"
#include "dist/wire.hpp"

namespace conveyor::dist {

using Clock = std::chrono::steady_clock;

namespace {

void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(rc, text, &length);
    fail(ErrorCode::kCommunication, "{} failed: {}", call, std::string(text, length));
  }
}

// Waits that poll (MPI progresses only inside its calls, so polling is also what moves a large
// message along): yields for the first millisecond, which keeps a hop that arrives soon cheap,
// then sleeps of a 32nd of the time waited so far, between 50 us and 1 ms: a message is noticed
// at most ~3 % late, and a long wait (a hop behind milliseconds of compute, an idle follower)
// wakes rarely enough to leave the cores to the stages (measured: 50 us sleeps throughout cost
// the stages a tenth of their speed on two shared cores).
class Backoff {
 public:
  void operator()() {
    const auto waited = Clock::now() - start_;
    if (waited < std::chrono::milliseconds(1)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::clamp<Clock::duration>(
          waited / 32, std::chrono::microseconds(50), std::chrono::milliseconds(1)));
    }
  }

 private:
  Clock::time_point start_ = Clock::now();
};

// Throws when the wait must end: stopped, or past its deadline.
void check_wait(Clock::time_point start, std::chrono::milliseconds timeout, const std::string& what,
                const MpiSession::StopFn& stop) {
  if (stop && stop()) fail(ErrorCode::kAborted, "{}: cancelled", what);
  if (timeout.count() > 0 && Clock::now() - start > timeout) {
    fail(ErrorCode::kTimeout,
         "{}: nothing after {} ms; the peer stopped answering (it died or hangs, or the network "
         "between broke). Raise EngineOptions::link_timeout_ms (--link-timeout-ms) if stages are "
         "this slow",
         what, timeout.count());
  }
}

// Polls `ready` until it returns true; throws when stopped or past `timeout`.
template <typename Ready>
void poll_until(Ready&& ready, std::chrono::milliseconds timeout, const std::string& what,
                const MpiSession::StopFn& stop) {
  const auto start = Clock::now();
  for (Backoff backoff;; backoff()) {
    if (ready()) return;
    check_wait(start, timeout, what, stop);
  }
}

int byte_count(size_t n, const std::string& what) {
  if (n > static_cast<size_t>(INT_MAX)) {
    fail(ErrorCode::kInvalidArgument,
         "{}: a message of {} bytes exceeds MPI's count limit of {} bytes; use smaller "
         "micro-batches (--chunking N)",
         what, n, INT_MAX);
  }
  return static_cast<int>(n);
}

}  // namespace

// ---- the world ---------------------------------------------------------------------------------

MpiGroup::MpiGroup(bool owns_mpi, MPI_Comm comm) : owns_mpi_(owns_mpi), comm_(comm) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  char name[MPI_MAX_PROCESSOR_NAME];
  int length = 0;
  MPI_Get_processor_name(name, &length);
  host_.assign(name, static_cast<size_t>(length));
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  MPI_Get_library_version(version, &length);
  std::string library(version, static_cast<size_t>(length));
  if (const size_t cut = library.find(','); cut != std::string::npos) library.resize(cut);
  transport_ = fmt::format("MPI ({}, THREAD_MULTIPLE)", library);
}

MpiGroup::~MpiGroup() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_mpi_ && !finalized) MPI_Finalize();
}

void MpiGroup::abort(int exit_code) {
  // MPI_Abort asks the launcher to end every rank; where the launcher cannot be reached (the
  // network to it broke), this process still ends, a few seconds later.
  std::thread([exit_code] {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    std::_Exit(exit_code);
  }).detach();
  MPI_Abort(comm_, exit_code);
  std::_Exit(exit_code);
}

// ---- an engine's communicator -------------------------------------------------------------------

MpiSession::MpiSession(const ProcessGroup& group) {
  const auto* mpi = dynamic_cast<const MpiGroup*>(&group);
  if (mpi == nullptr) {
    fail(ErrorCode::kInvalidArgument,
         "EngineOptions::processes must come from conveyor::mpi_world(): it is the only "
         "transport between processes");
  }
  check_mpi(MPI_Comm_dup(mpi->comm(), &comm_), "MPI_Comm_dup");
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void MpiSession::wait(MPI_Request& request, std::chrono::milliseconds timeout,
                      const std::string& what, const StopFn& stop) const {
  poll_until(
      [&] {
        int done = 0;
        check_mpi(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
        return done != 0;
      },
      timeout, what, stop);
}

void MpiSession::send(int peer, int tag, std::vector<std::byte> bytes,
                      std::chrono::milliseconds timeout, const std::string& what,
                      const StopFn& stop) const {
  // MPI may still read the buffer after a failed wait: it then stays allocated for good.
  auto owned = std::make_unique<std::vector<std::byte>>(std::move(bytes));
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Isend(owned->data(), byte_count(owned->size(), what), MPI_BYTE, peer, tag, comm_,
                      &request),
            "MPI_Isend");
  try {
    wait(request, timeout, what, stop);
  } catch (...) {
    MPI_Request_free(&request);
    (void)owned.release();
    throw;
  }
}

namespace {

// Waits for the next message from `peer` with `tag`: its envelope, for MPI_Imrecv.
MPI_Message probe(MPI_Comm comm, int peer, int tag, std::chrono::milliseconds timeout,
                  const std::string& what, const MpiSession::StopFn& stop, MPI_Status& status) {
  MPI_Message message = MPI_MESSAGE_NULL;
  poll_until(
      [&] {
        int found = 0;
        check_mpi(MPI_Improbe(peer, tag, comm, &found, &message, &status), "MPI_Improbe");
        return found != 0;
      },
      timeout, what, stop);
  return message;
}

}  // namespace

// Receives the probed `message` (`bytes` long) into a new `Container`; if the wait fails, the
// container stays allocated for good (MPI may still write into it).
template <typename Container>
Container MpiSession::take(MPI_Message& message, int bytes, std::chrono::milliseconds timeout,
                           const std::string& what, const StopFn& stop) const {
  auto out = std::make_unique<Container>(static_cast<size_t>(bytes) /
                                         sizeof(typename Container::value_type));
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Imrecv(out->data(), bytes, MPI_BYTE, &message, &request), "MPI_Imrecv");
  try {
    wait(request, timeout, what, stop);
  } catch (...) {
    (void)out.release();
    throw;
  }
  return std::move(*out);
}

std::vector<std::byte> MpiSession::recv(int peer, int tag, std::chrono::milliseconds timeout,
                                        const std::string& what, const StopFn& stop,
                                        int* source) const {
  MPI_Status status;
  MPI_Message message = probe(comm_, peer, tag, timeout, what, stop, status);
  int bytes = 0;
  MPI_Get_count(&status, MPI_BYTE, &bytes);
  if (source) *source = status.MPI_SOURCE;
  return take<std::vector<std::byte>>(message, bytes, timeout, what, stop);
}

std::vector<float> MpiSession::recv_floats(int peer, int tag, size_t count,
                                           std::chrono::milliseconds timeout,
                                           const std::string& what, const StopFn& stop) const {
  MPI_Status status;
  MPI_Message message = probe(comm_, peer, tag, timeout, what, stop, status);
  int bytes = 0;
  MPI_Get_count(&status, MPI_BYTE, &bytes);
  if (static_cast<size_t>(bytes) != count * sizeof(float)) {
    fail(ErrorCode::kCommunication, "{}: expected {} rows' bytes ({}) but {} arrived", what, count,
         count * sizeof(float), bytes);
  }
  return take<std::vector<float>>(message, bytes, timeout, what, stop);
}

std::string MpiSession::broadcast(const std::string& value) const {
  uint64_t n = value.size();
  check_mpi(MPI_Bcast(&n, 1, MPI_UINT64_T, 0, comm_), "MPI_Bcast");
  std::string out = rank_ == 0 ? value : std::string(n, '\0');
  check_mpi(MPI_Bcast(out.data(), byte_count(n, "broadcast"), MPI_CHAR, 0, comm_), "MPI_Bcast");
  return out;
}

std::vector<std::string> MpiSession::gather(const std::string& value) const {
  const int n = byte_count(value.size(), "gather");
  std::vector<int> counts(static_cast<size_t>(size_));
  check_mpi(MPI_Gather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, comm_), "MPI_Gather");
  std::vector<int> offsets(static_cast<size_t>(size_), 0);
  size_t total = 0;
  for (int r = 0; r < size_; ++r) {
    offsets[static_cast<size_t>(r)] = static_cast<int>(total);
    total += static_cast<size_t>(counts[static_cast<size_t>(r)]);
  }
  std::string all(rank_ == 0 ? total : 0, '\0');
  check_mpi(MPI_Gatherv(value.data(), n, MPI_CHAR, all.data(), counts.data(), offsets.data(),
                        MPI_CHAR, 0, comm_),
            "MPI_Gatherv");
  std::vector<std::string> out;
  if (rank_ == 0) {
    for (int r = 0; r < size_; ++r) {
      out.push_back(all.substr(static_cast<size_t>(offsets[static_cast<size_t>(r)]),
                               static_cast<size_t>(counts[static_cast<size_t>(r)])));
    }
  }
  return out;
}

// ---- the link between processes -----------------------------------------------------------------

namespace {
constexpr uint8_t kAbortedFlag = 1;  // a stand-in for a micro-batch of a failed step
constexpr uint8_t kMarkerFlag = 2;   // sent by reset(): everything before it is stale
}  // namespace

MpiLink::MpiLink(std::shared_ptr<const MpiSession> session, int peer, int from_stage, bool sender,
                 int capacity, std::chrono::milliseconds reset_timeout)
    : session_(std::move(session)),
      peer_(peer),
      from_stage_(from_stage),
      sender_(sender),
      capacity_(static_cast<size_t>(std::max(capacity, 1))),
      reset_timeout_(reset_timeout) {}

SendsInFlight::~SendsInFlight() {
  // The pipeline failed or the process is ending: give the receiver a moment, then leave what
  // remains allocated.
  const auto start = Clock::now();
  for (Backoff backoff; reap() > 0 && Clock::now() - start < std::chrono::seconds(1); backoff()) {
  }
  for (Send& send : sends_) {
    for (MPI_Request& r : send.requests) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
    new Send(std::move(send));  // leaked on purpose: MPI may still read it
  }
}

size_t SendsInFlight::reap() {
  for (auto it = sends_.begin(); it != sends_.end();) {
    int done = 0;
    check_mpi(MPI_Testall(2, it->requests, &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    it = done ? sends_.erase(it) : it + 1;
  }
  return sends_.size();
}

void SendsInFlight::post(const MpiSession& session, int peer, int tag,
                         std::vector<std::byte> header, std::vector<float> rows,
                         const std::string& what) {
  Send& send = sends_.emplace_back(Send{.header = std::move(header), .rows = std::move(rows)});
  check_mpi(MPI_Isend(send.header.data(), byte_count(send.header.size(), what), MPI_BYTE, peer, tag,
                      session.comm(), &send.requests[0]),
            "MPI_Isend");
  if (!send.rows.empty()) {
    check_mpi(MPI_Isend(send.rows.data(), byte_count(send.rows.size() * sizeof(float), what),
                        MPI_BYTE, peer, tag, session.comm(), &send.requests[1]),
              "MPI_Isend");
  }
}

namespace {

// What precedes a micro-batch's rows on a link (a second message when there are rows).
struct LinkHeader {
  int64_t step = -1;
  int32_t micro_batch = -1;
  uint8_t flags = 0;
  uint64_t n_floats = 0;

  std::vector<std::byte> encode() const {
    wire::Writer w;
    w.put(step);
    w.put(micro_batch);
    w.put(flags);
    w.put(n_floats);
    return w.take();
  }
  static LinkHeader decode(std::span<const std::byte> bytes) {
    wire::Reader r(bytes);
    LinkHeader h{.step = r.get<int64_t>(), .micro_batch = r.get<int32_t>()};
    h.flags = r.get<uint8_t>();
    h.n_floats = r.get<uint64_t>();
    r.finish();
    return h;
  }
};

}  // namespace

void MpiLink::send(LinkMessage&& message, std::chrono::milliseconds timeout) {
  const std::string what = fmt::format(
      "send of micro-batch {} of step {} from stage {} to stage {} (rank {} -> rank {})",
      message.micro_batch, message.step, from_stage_, from_stage_ + 1, session_->rank(), peer_);
  if (message.activations.device) {
    fail(ErrorCode::kInternal,
         "{}: MPI links carry host activations; CUDA stages in several processes are linked by "
         "NcclPeerLink",
         what);
  }
  if (!failed_.empty()) fail(ErrorCode::kCommunication, "{}: {}", what, failed_);
  const auto stop = [this] { return cancelled_.load(); };
  poll_until([&] { return in_flight_.reap() < capacity_ && !stop(); }, timeout, what, stop);
  std::vector<float> rows = std::move(message.activations.host);
  std::vector<std::byte> header = LinkHeader{.step = message.step,
                                             .micro_batch = message.micro_batch,
                                             .flags = message.aborted ? kAbortedFlag : uint8_t{0},
                                             .n_floats = rows.size()}
                                      .encode();
  in_flight_.post(*session_, peer_, kLinkTag, std::move(header), std::move(rows), what);
}

LinkMessage MpiLink::recv(std::chrono::milliseconds timeout) {
  const std::string what = fmt::format("receive into stage {} from stage {} (rank {} <- rank {})",
                                       from_stage_ + 1, from_stage_, session_->rank(), peer_);
  if (!failed_.empty()) fail(ErrorCode::kCommunication, "{}: {}", what, failed_);
  const auto stop = [this] { return cancelled_.load(); };
  const LinkHeader h = LinkHeader::decode(session_->recv(peer_, kLinkTag, timeout, what, stop));
  if (h.flags & kMarkerFlag) {
    fail(ErrorCode::kCommunication,
         "{}: a reset marker arrived while this end was not resetting; the link is out of step",
         what);
  }
  LinkMessage message{
      .micro_batch = h.micro_batch, .step = h.step, .aborted = (h.flags & kAbortedFlag) != 0};
  if (h.n_floats > 0) {
    message.activations.host =
        session_->recv_floats(peer_, kLinkTag, h.n_floats, timeout, what, stop);
  }
  return message;
}

void MpiLink::cancel() {
  cancelled_ = true;
}

void MpiLink::reset() {
  if (!failed_.empty()) {
    fail(ErrorCode::kCommunication, "the link from stage {} to stage {} failed earlier: {}",
         from_stage_, from_stage_ + 1, failed_);
  }
  cancelled_ = false;
  try {
    if (sender_) {
      // Behind whatever this end sent: the receiver drops up to here.
      in_flight_.post(*session_, peer_, kLinkTag, LinkHeader{.flags = kMarkerFlag}.encode(), {},
                      "reset marker");
      return;
    }
    const std::string what = fmt::format(
        "draining the link from stage {} (rank {}) after a failure", from_stage_, peer_);
    for (;;) {
      const LinkHeader h =
          LinkHeader::decode(session_->recv(peer_, kLinkTag, reset_timeout_, what));
      if (h.flags & kMarkerFlag) return;
      if (h.n_floats > 0) session_->recv(peer_, kLinkTag, reset_timeout_, what);  // its rows
    }
  } catch (const std::exception& e) {
    failed_ = e.what();
    throw;
  }
}

void MpiPeerChannel::post(std::vector<std::byte> bytes) {
  posted_.reap();
  posted_.post(*session_, peer_, kPeerTag, std::move(bytes), {},
               fmt::format("a link's message posted to rank {}", peer_));
}

void MpiPeerChannel::send(std::vector<std::byte> bytes, std::chrono::milliseconds timeout,
                          const StopFn& stop) {
  posted_.reap();
  session_->send(peer_, kPeerTag, std::move(bytes), timeout,
                 fmt::format("sending a link's message to rank {}", peer_), stop);
}

std::vector<std::byte> MpiPeerChannel::recv(std::chrono::milliseconds timeout, const StopFn& stop) {
  return session_->recv(peer_, kPeerTag, timeout,
                        fmt::format("a link's message from rank {}", peer_), stop);
}

// ---- the leader's view of the followers ------------------------------------------------------

namespace {

class MpiRemote final : public RemoteStages {
 public:
  MpiRemote(std::shared_ptr<const MpiSession> session, std::vector<std::string> names,
            std::chrono::milliseconds timeout)
      : session_(std::move(session)),
        names_(std::move(names)),
        timeout_(timeout),
        outstanding_(static_cast<size_t>(session_->size())),
        last_heard_(static_cast<size_t>(session_->size()), Clock::now()) {}
  ~MpiRemote() override { stop(); }

  void start(std::function<void(StepReport&&)> on_report,
             std::function<void(std::exception_ptr)> on_failure) override {
    on_report_ = std::move(on_report);
    on_failure_ = std::move(on_failure);
    thread_ = std::thread([this] { receive_loop(); });
  }

  void submit(uint64_t ticket, const StepPlan& plan, const StepContext& ctx) override {
    {
      std::lock_guard lock(mutex_);
      for (int r = 1; r < session_->size(); ++r)
        outstanding_[static_cast<size_t>(r)][ticket] = Clock::now();
    }
    to_all(wire::encode_submit(ticket, plan, ctx), fmt::format("step {}", plan.step));
  }
  void decide(uint64_t ticket, bool commit) override {
    to_all(wire::encode_decide(ticket, commit),
           fmt::format("the {} of ticket {}", commit ? "commit" : "rollback", ticket));
  }
  void truncate(int32_t seq, int64_t length) override {
    to_all(wire::encode_truncate(seq, length), fmt::format("truncation of slot {}", seq));
  }
  void release(int32_t seq) override {
    to_all(wire::encode_release(seq), fmt::format("release of slot {}", seq));
  }
  void cancel_links() override {
    to_all(wire::encode_signal(wire::ControlKind::kCancel), "a link cancellation");
  }
  void reset_links() override {
    to_all(wire::encode_signal(wire::ControlKind::kReset), "a link reset");
  }

  void stop() override {
    if (stopped_.exchange(true)) return;
    if (thread_.joinable()) thread_.join();
    if (!failed_) {
      // Short: a follower that does not take this is gone already.
      to_all(wire::encode_signal(wire::ControlKind::kStop), "stop",
             std::chrono::milliseconds(5000));
    }
  }

 private:
  void to_all(const std::vector<std::byte>& bytes, const std::string& what,
              std::chrono::milliseconds timeout = {}) {
    if (failed_) return;  // the pipeline stopped; its next call reports why
    for (int r = 1; r < session_->size(); ++r) {
      try {
        session_->send(r, kControlTag, bytes, timeout.count() ? timeout : timeout_,
                       fmt::format("sending {} to {}", what, names_[static_cast<size_t>(r)]));
      } catch (...) {
        fail_with(std::current_exception());
        return;
      }
    }
  }

  void receive_loop() {
    const auto stop = [this] { return stopped_.load(); };
    while (!stopped_) {
      int source = -1;
      std::vector<std::byte> bytes;
      try {
        // Wake up now and then to look for silence.
        bytes = session_->recv(MPI_ANY_SOURCE, kReportTag, std::chrono::milliseconds(250),
                               "reports", stop, &source);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kTimeout) {
          check_silence();
          continue;
        }
        if (e.code() == ErrorCode::kAborted) return;  // stopping
        fail_with(std::current_exception());
        return;
      }
      try {
        StepReport report = wire::decode_report(bytes);
        report.rank = source;
        {
          std::lock_guard lock(mutex_);
          outstanding_[static_cast<size_t>(source)].erase(report.ticket);
          last_heard_[static_cast<size_t>(source)] = Clock::now();
        }
        on_report_(std::move(report));
        check_silence();  // another rank's reports do not excuse a silent one
      } catch (...) {
        fail_with(std::current_exception());
        return;
      }
    }
  }

  void check_silence() {
    if (failed_) return;
    std::lock_guard lock(mutex_);
    const auto now = Clock::now();
    for (int r = 1; r < session_->size(); ++r) {
      const auto& waiting = outstanding_[static_cast<size_t>(r)];
      if (waiting.empty()) continue;
      const auto since = std::max(last_heard_[static_cast<size_t>(r)], waiting.begin()->second);
      if (now - since > timeout_) {
        fail_with(std::make_exception_ptr(Error(
            ErrorCode::kTimeout,
            fmt::format("{} sent nothing for {} ms while a step it runs was in flight: it died "
                        "or hangs, or the network to it broke (EngineOptions::link_timeout_ms)",
                        names_[static_cast<size_t>(r)], timeout_.count()))));
        return;
      }
    }
  }

  void fail_with(std::exception_ptr error) {
    failed_ = true;
    if (on_failure_) on_failure_(std::move(error));
  }

  std::shared_ptr<const MpiSession> session_;
  std::vector<std::string> names_;  // by rank: "rank 1 (host, stages [2, 4))"
  std::chrono::milliseconds timeout_;
  std::function<void(StepReport&&)> on_report_;
  std::function<void(std::exception_ptr)> on_failure_;
  std::thread thread_;
  std::atomic<bool> stopped_{false};
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::vector<std::map<uint64_t, Clock::time_point>> outstanding_;  // by rank: ticket -> sent
  std::vector<Clock::time_point> last_heard_;                       // by rank
};

}  // namespace

std::shared_ptr<RemoteStages> make_mpi_remote(std::shared_ptr<const MpiSession> session,
                                              std::vector<std::string> rank_names,
                                              std::chrono::milliseconds timeout) {
  return std::make_shared<MpiRemote>(std::move(session), std::move(rank_names), timeout);
}

void send_report(const MpiSession& session, StepReport report, std::chrono::milliseconds timeout) {
  report.rank = session.rank();
  session.send(0, kReportTag, wire::encode_report(report), timeout,
               fmt::format("report of step {} to rank 0", report.step));
}

void follow(const MpiSession& session, Pipeline& pipeline, std::chrono::milliseconds timeout) {
  // The steps in flight here: their context must live until they are decided.
  std::map<uint64_t, std::unique_ptr<wire::SubmittedStep>> steps;
  for (;;) {
    std::vector<std::byte> bytes;
    try {
      // No deadline while idle (a server waits for requests; MPI's launcher ends this process
      // when the leader dies). With steps in flight the leader owes a decision: silence past
      // the link timeout means it, or the network to it, is gone.
      const bool waiting = pipeline.in_flight() > 0;
      bytes = session.recv(0, kControlTag, waiting ? timeout : std::chrono::milliseconds(0),
                           waiting ? fmt::format("rank {} waiting for the leader (rank 0) to "
                                                 "decide its {} step(s) in flight",
                                                 session.rank(), pipeline.in_flight())
                                   : "waiting for the leader (rank 0)",
                           [&] { return pipeline.broken() != nullptr; });
    } catch (const Error&) {
      if (std::exception_ptr broken = pipeline.broken()) std::rethrow_exception(broken);
      throw;
    }
    wire::Control control = wire::decode_control(bytes);
    switch (control.kind) {
      case wire::ControlKind::kSubmit: {
        auto step = std::make_unique<wire::SubmittedStep>(std::move(control.submit));
        step->ctx.sampling = step->sampling;
        step->ctx.logits = step->logits;
        const uint64_t ticket = pipeline.submit(step->plan, step->ctx);
        if (ticket != step->ticket) {
          fail(ErrorCode::kInternal,
               "rank {} is out of step with the leader: it numbered step {} ticket {}, the "
               "leader {}",
               session.rank(), step->plan.step, ticket, step->ticket);
        }
        steps[ticket] = std::move(step);
        break;
      }
      case wire::ControlKind::kDecide:
        pipeline.decide(control.ticket, control.commit);
        steps.erase(control.ticket);
        break;
      case wire::ControlKind::kTruncate:
        pipeline.truncate(control.seq, control.length);
        break;
      case wire::ControlKind::kRelease:
        pipeline.release(control.seq);
        break;
      case wire::ControlKind::kCancel:
        pipeline.cancel_links();
        break;
      case wire::ControlKind::kReset:
        pipeline.reset_cancelled_links();
        break;
      case wire::ControlKind::kStop:
        return;
    }
  }
}

}  // namespace conveyor::dist

// ---- Distributed over MPI -----------------------------------------------------------------------

namespace conveyor::dist {
namespace {

class MpiDistributed final : public Distributed {
 public:
  MpiDistributed(const ProcessGroup& group, std::chrono::milliseconds timeout)
      : session_(std::make_shared<MpiSession>(group)), timeout_(timeout) {}

  int rank() const override { return session_->rank(); }
  int size() const override { return session_->size(); }
  std::string broadcast(const std::string& value) override { return session_->broadcast(value); }
  std::vector<std::string> gather(const std::string& value) override {
    return session_->gather(value);
  }
  std::unique_ptr<Link> make_link(int from_stage, int peer, int capacity) override {
    return std::make_unique<MpiLink>(session_, peer, from_stage, peer > session_->rank(), capacity,
                                     timeout_);
  }
  std::unique_ptr<PeerChannel> make_peer_channel(int peer) override {
    return std::make_unique<MpiPeerChannel>(session_, peer);
  }
  std::shared_ptr<RemoteStages> make_remote(std::vector<std::string> rank_names) override {
    return make_mpi_remote(session_, std::move(rank_names), timeout_);
  }
  void report(StepReport&& report) override {
    try {
      send_report(*session_, std::move(report), timeout_);
    } catch (const std::exception& e) {
      spdlog::error("rank {}: {}", session_->rank(), e.what());
    }
  }
  void follow(Pipeline& pipeline) override { dist::follow(*session_, pipeline, timeout_); }

 private:
  std::shared_ptr<MpiSession> session_;
  std::chrono::milliseconds timeout_;
};

}  // namespace

std::shared_ptr<Distributed> Distributed::create(const ProcessGroup& group,
                                                 std::chrono::milliseconds timeout) {
  return std::make_shared<MpiDistributed>(group, timeout);
}

}  // namespace conveyor::dist
