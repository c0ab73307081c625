// HostLink: a bounded FIFO of activation messages between two stage threads.
#include "backend/link.hpp"

#include "core/check.hpp"

namespace conveyor {

HostLink::HostLink(int capacity) : capacity_(static_cast<size_t>(capacity)) {
  if (capacity < 1) {
    fail(ErrorCode::kInvalidArgument, "link capacity is {} but must be at least 1", capacity);
  }
}

void HostLink::send(LinkMessage&& message, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  const bool ready =
      changed_.wait_for(lock, timeout, [&] { return cancelled_ || queue_.size() < capacity_; });
  if (cancelled_) {
    fail(ErrorCode::kAborted, "link cancelled while sending micro-batch {}", message.micro_batch);
  }
  if (!ready) {
    fail(ErrorCode::kTimeout,
         "send of micro-batch {} waited {} ms for the next stage to take a buffer; raise "
         "EngineOptions::link_timeout_ms if stages are this slow",
         message.micro_batch, timeout.count());
  }
  queue_.push_back(std::move(message));
  changed_.notify_all();
}

LinkMessage HostLink::recv(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  const bool ready =
      changed_.wait_for(lock, timeout, [&] { return cancelled_ || !queue_.empty(); });
  if (cancelled_) fail(ErrorCode::kAborted, "link cancelled while receiving");
  if (!ready) {
    fail(ErrorCode::kTimeout,
         "receive waited {} ms for the previous stage; raise EngineOptions::link_timeout_ms if "
         "stages are this slow",
         timeout.count());
  }
  LinkMessage message = std::move(queue_.front());
  queue_.pop_front();
  changed_.notify_all();
  return message;
}

void HostLink::cancel() {
  std::lock_guard lock(mutex_);
  cancelled_ = true;
  changed_.notify_all();
}

void HostLink::reset() {
  std::lock_guard lock(mutex_);
  queue_.clear();
  cancelled_ = false;
}

}  // namespace conveyor
