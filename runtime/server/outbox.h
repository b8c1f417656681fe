// The bounded outgoing queue of one connection. Generation threads push events and wait while
// the client has more than max_bytes unread (the generation pauses); a client that does not drain
// within stall_timeout is dropped with a clear reason instead of the server buffering without
// bound. The connection's strand takes messages off the front and writes them one at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

namespace agentrt::server {

struct OutboxLimits {
  size_t max_bytes = 4 << 20;
  std::chrono::milliseconds stall_timeout{10000};
};

class Outbox {
 public:
  // `wake` is called (outside the lock) whenever there is something new for the writer: a
  // message, or the queue was finished/aborted. It must only post to the connection's strand.
  Outbox(OutboxLimits limits, std::function<void()> wake);

  // From a generation thread: waits while the queue is full. False when the connection is
  // closing, or when the client left the queue full for stall_timeout (then the queue is
  // dropped, `message` replaced by the stall notice, and the connection closed with 1008).
  bool push_blocking(std::string message);
  // From the strand or anywhere that must not wait (protocol errors, session.created): never
  // waits; false once closing.
  bool push(std::string message);
  // No more messages after these; the writer drains what is queued, then closes with code and
  // reason.
  void finish(uint16_t code, std::string reason, std::optional<std::string> last_message = {});
  // The connection is gone: drop everything, fail every pusher.
  void abort();

  // Writer side (the strand). take() hands out the front message; its bytes count against the
  // limit until written() is called.
  std::optional<std::string> take();
  void written(size_t bytes);
  bool drained_and_finished() const;
  uint16_t close_code() const;
  std::string close_reason() const;
  bool stalled() const;  // the client was dropped for not reading
  size_t high_water_bytes() const;

 private:
  void notify();
  OutboxLimits limits_;
  std::function<void()> wake_;
  mutable std::mutex mutex_;
  std::condition_variable drained_;
  std::deque<std::string> queue_;
  size_t bytes_ = 0;  // queued + being written
  size_t high_water_ = 0;
  bool finished_ = false, aborted_ = false, stalled_ = false;
  uint16_t code_ = 1000;
  std::string reason_;
};

}  // namespace agentrt::server
