#include "runtime/server/outbox.h"

#include <algorithm>

namespace agentrt::server {

Outbox::Outbox(OutboxLimits limits, std::function<void()> wake)
    : limits_(limits), wake_(std::move(wake)) {}

void Outbox::notify() {
  if (wake_) wake_();
}

bool Outbox::push_blocking(std::string message) {
  {
    std::unique_lock lock(mutex_);
    const bool room = drained_.wait_for(lock, limits_.stall_timeout, [&] {
      return finished_ || aborted_ || bytes_ <= limits_.max_bytes;
    });
    if (finished_ || aborted_) return false;
    if (!room) {
      // The client stopped reading: what it has not read is dropped (memory stays bounded), and
      // it gets the reason if it ever reads again.
      stalled_ = true;
      finished_ = true;
      code_ = 1008;
      reason_ = "client too slow: " + std::to_string(bytes_) + " bytes unread for " +
                std::to_string(limits_.stall_timeout.count()) + " ms";
      queue_.clear();
      queue_.push_back(R"({"type":"error","error":{"code":"client_too_slow","message":")" +
                       reason_ + R"("}})");
      bytes_ = queue_.back().size();  // a write in flight is accounted by written()
      lock.unlock();
      notify();
      return false;
    }
    bytes_ += message.size();
    high_water_ = std::max(high_water_, bytes_);
    queue_.push_back(std::move(message));
  }
  notify();
  return true;
}

bool Outbox::push(std::string message) {
  {
    std::lock_guard lock(mutex_);
    if (finished_ || aborted_) return false;
    bytes_ += message.size();
    high_water_ = std::max(high_water_, bytes_);
    queue_.push_back(std::move(message));
  }
  notify();
  return true;
}

void Outbox::finish(uint16_t code, std::string reason, std::optional<std::string> last_message) {
  {
    std::lock_guard lock(mutex_);
    if (finished_ || aborted_) return;
    if (last_message) {
      bytes_ += last_message->size();
      queue_.push_back(std::move(*last_message));
    }
    finished_ = true;
    code_ = code;
    reason_ = std::move(reason);
  }
  drained_.notify_all();
  notify();
}

void Outbox::abort() {
  {
    std::lock_guard lock(mutex_);
    aborted_ = true;
    queue_.clear();
  }
  drained_.notify_all();
}

std::optional<std::string> Outbox::take() {
  std::lock_guard lock(mutex_);
  if (aborted_ || queue_.empty()) return std::nullopt;
  std::string front = std::move(queue_.front());
  queue_.pop_front();
  return front;
}

void Outbox::written(size_t bytes) {
  {
    std::lock_guard lock(mutex_);
    bytes_ -= std::min(bytes_, bytes);
  }
  drained_.notify_all();
}

bool Outbox::drained_and_finished() const {
  std::lock_guard lock(mutex_);
  return finished_ && queue_.empty();
}

uint16_t Outbox::close_code() const {
  std::lock_guard lock(mutex_);
  return code_;
}

std::string Outbox::close_reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

bool Outbox::stalled() const {
  std::lock_guard lock(mutex_);
  return stalled_;
}

size_t Outbox::high_water_bytes() const {
  std::lock_guard lock(mutex_);
  return high_water_;
}

}  // namespace agentrt::server
