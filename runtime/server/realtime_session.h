// WebSocket tool-calling sessions at /v1/sessions (protocol: docs/server.md). State lives
// server-side (a transcript per session), so a dropped client can resume by id
// (/v1/sessions?session_id=ID) and many turns share one conversation. Client-side tools pause
// the loop until the client answers with function_call_output (or the timeout passes).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <map>
#include <memory>
#include <mutex>

#include "runtime/server/server.h"

namespace agentrt::server {

struct SessionState;

// All sessions of a server, by id; kept after a disconnect so clients can resume.
class SessionDirectory {
 public:
  std::shared_ptr<SessionState> find(const std::string& id);
  void add(const std::shared_ptr<SessionState>& state);
  size_t size();
  void cancel_all();

 private:
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<SessionState>> sessions_;
};

struct RealtimeContext {
  std::shared_ptr<Backend> backend;
  std::shared_ptr<tools::ToolRegistry> builtins;
  AgentOptions defaults;
  const ServerOptions& options;
  ServerMetrics& metrics;
  SessionDirectory& sessions;
  std::atomic<bool>& stopping;
};

void run_realtime_session(boost::asio::ip::tcp::socket socket,
                          const boost::beast::http::request<boost::beast::http::string_body>& req,
                          boost::beast::flat_buffer& buffer, RealtimeContext ctx);

// Validates a client event; throws std::invalid_argument with a protocol error message.
nlohmann::json parse_client_event(const std::string& text);

}  // namespace agentrt::server
