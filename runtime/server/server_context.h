// What every connection of a server shares: the backend and tools, options, metrics, the
// session directory, the per-key request limiter, the tracker of blocking model work (turns run
// off the io threads) and the registry of live connections (for shutdown). Owned by the Server.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "runtime/server/outbox.h"
#include "runtime/server/server.h"
#include "runtime/server/session_directory.h"

namespace agentrt::server {

// Concurrent requests (running turns and chat completions) per API key.
class KeyLimiter {
 public:
  explicit KeyLimiter(size_t max_per_key) : max_(max_per_key) {}
  // Held while the request runs; empty when the key is at its limit.
  std::shared_ptr<void> try_acquire(const std::string& key) {
    std::lock_guard lock(mutex_);
    if (max_ != 0 && running_[key] >= max_) return nullptr;
    ++running_[key];
    // Non-null (it is tested for), never dereferenced; the deleter gives the slot back.
    return std::shared_ptr<void>(this, [this, key](void*) {
      std::lock_guard l(mutex_);
      if (--running_[key] == 0) running_.erase(key);
    });
  }
  size_t limit() const { return max_; }

 private:
  size_t max_;
  std::mutex mutex_;
  std::map<std::string, size_t> running_;
};

// Blocking model work (agent turns, chat completions) runs on threads of its own so the io
// threads only move bytes; stop() waits here for it to end.
class WorkTracker {
 public:
  void spawn(std::function<void()> fn) {
    {
      std::lock_guard lock(mutex_);
      ++running_;
    }
    std::thread([this, fn = std::move(fn)]() mutable {
      try {
        fn();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "agentrt serve: a turn failed: %s\n", e.what());
      }
      fn = nullptr;  // what the work captured goes before the tracker is told
      std::lock_guard lock(mutex_);
      --running_;
      idle_.notify_all();
    }).detach();
  }
  // True when all work ended before the deadline.
  bool wait_idle(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    return idle_.wait_until(lock, deadline, [&] { return running_ == 0; });
  }
  size_t running() {
    std::lock_guard lock(mutex_);
    return running_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable idle_;
  size_t running_ = 0;
};

// A live connection, as shutdown sees it.
class Closable {
 public:
  virtual ~Closable() = default;
  // Posts to the connection's strand: finish what is queued, then close (1001 with `reason` for
  // a WebSocket).
  virtual void close_gracefully(const std::string& reason) = 0;
};

class ConnectionRegistry {
 public:
  uint64_t add(std::weak_ptr<Closable> c) {
    std::lock_guard lock(mutex_);
    live_[next_] = std::move(c);
    return next_++;
  }
  void remove(uint64_t id) {
    std::lock_guard lock(mutex_);
    live_.erase(id);
    gone_.notify_all();
  }
  void close_all(const std::string& reason) {
    std::map<uint64_t, std::weak_ptr<Closable>> copy;
    {
      std::lock_guard lock(mutex_);
      copy = live_;
    }
    for (auto& [id, weak] : copy)
      if (auto c = weak.lock()) c->close_gracefully(reason);
  }
  bool wait_empty(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    return gone_.wait_until(lock, deadline, [&] { return live_.empty(); });
  }

 private:
  std::mutex mutex_;
  std::condition_variable gone_;
  std::map<uint64_t, std::weak_ptr<Closable>> live_;
  uint64_t next_ = 0;
};

struct ServerContext {
  std::shared_ptr<Backend> backend;
  std::shared_ptr<tools::ToolRegistry> builtins;
  AgentOptions defaults;
  ServerOptions options;
  ServerMetrics metrics;
  SessionDirectory sessions;
  KeyLimiter key_limits;
  WorkTracker work;
  ConnectionRegistry connections;
  std::atomic<bool> stopping{false};

  ServerContext(std::shared_ptr<Backend> b, std::shared_ptr<tools::ToolRegistry> t, AgentOptions d,
                ServerOptions o)
      : backend(std::move(b)),
        builtins(std::move(t)),
        defaults(std::move(d)),
        options(std::move(o)),
        sessions(options.sessions_dir, options.resume_grace),
        key_limits(options.max_requests_per_key) {}

  void log(const std::string& line) const {
    if (options.log) std::fprintf(stderr, "agentrt serve: %s\n", line.c_str());
  }
  OutboxLimits outbox_limits() const {
    return {options.max_outbox_bytes, options.slow_client_timeout};
  }
};

}  // namespace agentrt::server
