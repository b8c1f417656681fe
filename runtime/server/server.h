// `agentrt serve`: OpenAI-compatible HTTP (POST /v1/chat/completions with SSE streaming,
// GET /v1/models, /health, /metrics) and WebSocket tool-calling sessions (/v1/sessions, a
// JSON protocol modelled on the OpenAI Realtime API: docs/server.md), over Boost.Beast.
// This version serves each connection on its own thread (sessions run the blocking agent loop);
// see docs/server.md for what is not there yet.
#pragma once

#include <atomic>
#include <cstdint>
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
      allowed_origins;  // browsers: empty allows none but same-origin-less clients
  size_t max_sessions = 256;
  size_t max_message_bytes = 1 << 20;
  std::string model_name = "agentrt";
  std::chrono::milliseconds client_tool_timeout{60000};
  bool log = true;
};

struct ServerMetrics {
  std::atomic<int64_t> http_requests{0}, sessions_open{0}, sessions_total{0}, prompt_tokens{0},
      completion_tokens{0}, tool_calls{0}, errors{0};
  std::atomic<int64_t> latency_ms_total{0}, latency_count{0};
  std::string prometheus() const;
};

class Server {
 public:
  Server(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> builtin_tools,
         AgentOptions defaults, ServerOptions options);
  ~Server();
  uint16_t start();  // binds and starts accepting on a background thread; returns the port
  void stop();       // stops accepting, cancels running sessions, joins threads
  const ServerMetrics& metrics() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace agentrt::server
