// NcclPeerLink: a link between CUDA stages in two processes, rows over NCCL, the rest over the
// process transport's PeerChannel.
#include "backend/cuda/nccl_peer_link.hpp"

#include <fmt/format.h>

#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "backend/cuda/activation_pool.hpp"
#include "backend/cuda/nccl_link.hpp"
#include "core/check.hpp"

namespace conveyor::cuda {

namespace {

// What the channel carries, one message each.
enum class Kind : uint8_t {
  kJoin = 1,     // the first communicator's id (construction)
  kRows = 2,     // a micro-batch whose rows follow over NCCL
  kAborted = 3,  // a stand-in for a micro-batch the sender's stage failed
  kReset = 4,    // the reset marker, with the next communicator's id
};

struct Header {
  Kind kind = Kind::kRows;
  int64_t step = -1;
  int32_t micro_batch = -1;
  int64_t n_tokens = 0;
  NcclUniqueId id;  // kJoin and kReset

  static constexpr size_t kFixed = 1 + 8 + 4 + 8;

  std::vector<std::byte> encode() const {
    const bool with_id = kind == Kind::kJoin || kind == Kind::kReset;
    std::vector<std::byte> out(kFixed + (with_id ? id.bytes.size() : 0));
    std::byte* p = out.data();
    const auto put = [&p](const void* value, size_t n) {
      std::memcpy(p, value, n);
      p += n;
    };
    put(&kind, 1);
    put(&step, 8);
    put(&micro_batch, 4);
    put(&n_tokens, 8);
    if (with_id) put(id.bytes.data(), id.bytes.size());
    return out;
  }

  static Header decode(std::span<const std::byte> in, const std::string& link) {
    Header h;
    if (in.size() < kFixed) {
      fail(ErrorCode::kCommunication,
           "{}: a header of {} bytes arrived, {} expected; start every rank with the same "
           "conveyor build",
           link, in.size(), kFixed);
    }
    const std::byte* p = in.data();
    const auto get = [&p](void* value, size_t n) {
      std::memcpy(value, p, n);
      p += n;
    };
    uint8_t kind = 0;
    get(&kind, 1);
    get(&h.step, 8);
    get(&h.micro_batch, 4);
    get(&h.n_tokens, 8);
    h.kind = static_cast<Kind>(kind);
    const bool with_id = h.kind == Kind::kJoin || h.kind == Kind::kReset;
    if (kind < 1 || kind > 4 || in.size() != kFixed + (with_id ? h.id.bytes.size() : 0) ||
        h.n_tokens < 0) {
      fail(ErrorCode::kCommunication,
           "{}: a malformed header arrived (kind {}, {} bytes, {} rows); start every rank with "
           "the same conveyor build",
           link, kind, in.size(), h.n_tokens);
    }
    if (with_id) get(h.id.bytes.data(), h.id.bytes.size());
    return h;
  }
};

}  // namespace

NcclPeerLink::NcclPeerLink(std::unique_ptr<PeerChannel> channel, const NcclPeerLinkOptions& options)
    : channel_(std::move(channel)), options_(options) {
  set_device(options_.device);
  if (options_.sender) {
    sender_ = std::make_unique<NcclRowSender>(options_.device, /*peer=*/1, options_.capacity);
    Header first{.kind = Kind::kJoin};
    first.id = NcclCommunicator::make_unique_id();
    channel_->send(first.encode(), options_.timeout, {});
    join(first.id, options_.timeout);
    return;
  }
  receiver_ = std::make_unique<NcclRowReceiver>(options_.device, /*peer=*/0, options_.max_tokens,
                                                options_.hidden, options_.capacity);
  const Header h = Header::decode(channel_->recv(options_.timeout, {}), name());
  if (h.kind != Kind::kJoin) {
    fail(ErrorCode::kCommunication,
         "{}: the first message (kind {}) was not the communicator's id; the other end is not "
         "an NCCL link of the same conveyor build (start every rank with the same build, "
         "model and --backend)",
         name(), static_cast<int>(h.kind));
  }
  join(h.id, options_.timeout);
}

NcclPeerLink::~NcclPeerLink() {
  if (comm_) comm_->abort();
}

std::string NcclPeerLink::name() const {
  return fmt::format("the NCCL link from stage {} to stage {} ({} end, device {})",
                     options_.from_stage, options_.from_stage + 1,
                     options_.sender ? "sending" : "receiving", options_.device);
}

PeerChannel::StopFn NcclPeerLink::stop() const {
  return [this] { return cancelled_.load(); };
}

void NcclPeerLink::join(const NcclUniqueId& id, std::chrono::milliseconds timeout) {
  if (comm_) comm_->abort();
  comm_.reset();
  try {
    comm_.emplace(NcclCommunicator::init_rank(id, /*world_size=*/2, options_.sender ? 0 : 1,
                                              options_.device, timeout, &cancelled_));
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kAborted) throw;
    fail(e.code(),
         "{}: joining the communicator with the other end failed within {} ms: {}; the other "
         "rank died or is still loading (raise --link-timeout-ms), or NCCL cannot reach it "
         "(NCCL_DEBUG=INFO says why)",
         name(), timeout.count(), e.what());
  }
}

void NcclPeerLink::join_pending(std::chrono::milliseconds timeout) {
  if (!failed_.empty()) {
    fail(ErrorCode::kCommunication, "{} failed earlier: {}", name(), failed_);
  }
  if (pending_) {
    join(*pending_, timeout);
    pending_.reset();  // after a failed join the next transfer tries again
  }
  if (!comm_) {
    fail(ErrorCode::kCommunication, "{} has no communicator (an earlier join failed)", name());
  }
}

void NcclPeerLink::send(LinkMessage&& message, std::chrono::milliseconds timeout) {
  if (cancelled_.load()) fail(ErrorCode::kAborted, "{} was cancelled", name());
  join_pending(timeout);
  Header header{.kind = message.aborted ? Kind::kAborted : Kind::kRows,
                .step = message.step,
                .micro_batch = message.micro_batch};
  if (message.aborted) {  // a stand-in without rows: only the header travels
    channel_->send(header.encode(), timeout, stop());
    return;
  }
  const CudaActivations& rows = cuda_rows_of(message, options_.device, options_.hidden, name());
  header.n_tokens = rows.n_tokens();
  sender_->send(
      *comm_, rows, [&] { channel_->send(header.encode(), timeout, stop()); }, timeout,
      &cancelled_);
}

LinkMessage NcclPeerLink::recv(std::chrono::milliseconds timeout) {
  if (cancelled_.load()) fail(ErrorCode::kAborted, "{} was cancelled", name());
  join_pending(timeout);
  const Header h = Header::decode(channel_->recv(timeout, stop()), name());
  if (h.kind != Kind::kRows && h.kind != Kind::kAborted) {
    fail(ErrorCode::kCommunication,
         "{}: a {} arrived while this end was not resetting; the link is out of step", name(),
         h.kind == Kind::kReset ? "reset marker" : "communicator id");
  }
  LinkMessage message{
      .micro_batch = h.micro_batch, .step = h.step, .aborted = h.kind == Kind::kAborted};
  if (message.aborted) return message;
  message.activations.device =
      receiver_->recv(*comm_, h.n_tokens, h.micro_batch, name(), timeout, &cancelled_);
  return message;
}

void NcclPeerLink::cancel() {
  // A wait in NCCL sees it and aborts the communicator; a wait on the channel stops.
  cancelled_.store(true);
}

void NcclPeerLink::reset() {
  if (!failed_.empty()) {
    fail(ErrorCode::kCommunication, "{} failed earlier: {}", name(), failed_);
  }
  cancelled_.store(false);
  try {
    // Transfers may be left unmatched: neither end uses this communicator again.
    if (comm_) comm_->abort();
    if (options_.sender) {
      sender_->reset();
      // Posted, not awaited: the receiving end resets only after this one returned. Always a new
      // id: a join that was cancelled half-way may have registered with the old one's root.
      pending_ = NcclCommunicator::make_unique_id();
      Header marker{.kind = Kind::kReset};
      marker.id = *pending_;
      channel_->post(marker.encode());
      return;
    }
    for (;;) {  // the headers the sender sent before its marker belong to the failed step
      const Header h = Header::decode(channel_->recv(options_.timeout, {}), name());
      if (h.kind == Kind::kReset) {
        pending_ = h.id;
        return;
      }
    }
  } catch (const std::exception& e) {
    failed_ = e.what();
    throw;
  }
}

}  // namespace conveyor::cuda
