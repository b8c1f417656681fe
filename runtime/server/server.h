// `agentrt serve`: OpenAI-compatible HTTP (POST /v1/chat/completions with SSE streaming,
// GET /v1/models, /health, /metrics) and WebSocket tool-calling sessions (/v1/sessions, a
// JSON protocol modelled on the OpenAI Realtime API: docs/server.md), over Boost.Beast.
// Asynchronous: an io_context run by a few threads, each connection's handlers on its strand;
// blocking model work (agent turns, completions) runs off the io threads, and with a native
// backend configured for batching, the decode steps of all sessions share forward passes.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "runtime/agent.h"

namespace agentrt::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;               // 0: any free port (start() returns it)
  std::vector<std::string> api_keys;  // empty: no auth
  std::vector<std::string>
      allowed_origins;        // browsers: empty allows none but same-origin-less clients
  size_t max_sessions = 256;  // WebSocket sessions held (open or resumable)
  size_t max_message_bytes = 1 << 20;
  size_t max_requests_per_key = 0;  // running turns + completions per API key; 0 = no limit
  std::string model_name = "agentrt";
  std::chrono::milliseconds client_tool_timeout{60000};
  // A session with no client event and no running turn for this long is closed (0 = never).
  std::chrono::milliseconds idle_timeout{300000};
  std::chrono::milliseconds max_session_time{0};     // per connection; 0 = no limit
  std::chrono::milliseconds resume_grace{600000};    // a dropped session can be resumed this long
  std::chrono::milliseconds request_timeout{30000};  // to receive an HTTP request (and TLS hello)
  // Backpressure: unread bytes per connection before the generation pauses, and how long a
  // client may leave them unread before it is dropped.
  size_t max_outbox_bytes = 4 << 20;
  std::chrono::milliseconds slow_client_timeout{10000};
  std::chrono::milliseconds shutdown_grace{5000};  // running turns may finish within this
  std::filesystem::path sessions_dir;  // transcripts + checkpoints; default: $TMP/agentrt-sessions
  std::string tls_cert, tls_key;       // PEM files; both set: HTTPS / WSS only
  size_t io_threads = 2;
  bool log = true;
};

struct ServerMetrics {
  std::atomic<int64_t> http_requests{0}, sessions_open{0}, sessions_total{0}, prompt_tokens{0},
      completion_tokens{0}, tool_calls{0}, errors{0}, rejected_requests{0}, slow_client_closes{0},
      timeout_closes{0};
  std::atomic<int64_t> latency_ms_total{0}, latency_count{0};
  std::string prometheus() const;
};

class Server {
 public:
  Server(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> builtin_tools,
         AgentOptions defaults, ServerOptions options);
  ~Server();
  uint16_t start();  // binds and starts the io threads; returns the port
  // Stops accepting, lets running turns finish within shutdown_grace, cancels the rest,
  // checkpoints every session (resumable by id after a restart) and closes connections (1001).
  void stop();
  const ServerMetrics& metrics() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace agentrt::server
