#include "runtime/server/server.h"

#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <future>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "runtime/server/chat_completions.h"
#include "runtime/server/realtime_session.h"

namespace agentrt::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

std::string ServerMetrics::prometheus() const {
  std::ostringstream o;
  const auto line = [&](const char* name, const char* help, const char* type, int64_t v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
      << name << " " << v << "\n";
  };
  line("agentrt_http_requests_total", "HTTP requests served", "counter", http_requests);
  line("agentrt_sessions_open", "WebSocket sessions open now", "gauge", sessions_open);
  line("agentrt_sessions_total", "WebSocket sessions opened", "counter", sessions_total);
  line("agentrt_prompt_tokens_total", "prompt tokens processed", "counter", prompt_tokens);
  line("agentrt_completion_tokens_total", "tokens generated", "counter", completion_tokens);
  line("agentrt_tool_calls_total", "tool calls executed or sent to clients", "counter", tool_calls);
  line("agentrt_errors_total", "requests or events that ended in an error", "counter", errors);
  line("agentrt_generation_latency_ms_sum", "sum of generation latencies", "counter",
       latency_ms_total);
  line("agentrt_generation_latency_count", "generations measured", "counter", latency_count);
  return o.str();
}

struct Server::Impl {
  std::shared_ptr<Backend> backend;
  std::shared_ptr<tools::ToolRegistry> builtins;
  AgentOptions defaults;
  ServerOptions options;
  ServerMetrics metrics;
  asio::io_context io;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::thread accept_thread;
  std::atomic<bool> stopping{false};
  std::mutex mutex;
  std::list<std::thread> connections;
  std::set<int> live_fds;
  SessionDirectory sessions;

  void log(const std::string& line) {
    if (options.log) std::fprintf(stderr, "agentrt serve: %s\n", line.c_str());
  }

  bool authorized(const http::request<http::string_body>& req) const {
    if (options.api_keys.empty()) return true;
    const auto it = req.find(http::field::authorization);
    if (it == req.end()) return false;
    const std::string value(it->value());
    for (const auto& key : options.api_keys) {
      if (value == "Bearer " + key) return true;
    }
    return false;
  }

  bool origin_allowed(const http::request<http::string_body>& req) const {
    const auto it = req.find(http::field::origin);
    if (it == req.end()) return true;  // not a browser
    for (const auto& o : options.allowed_origins) {
      if (o == it->value() || o == "*") return true;
    }
    return false;
  }

  static void respond(tcp::socket& socket, http::status status, const std::string& body,
                      const std::string& type = "application/json") {
    http::response<http::string_body> res{status, 11};
    res.set(http::field::content_type, type);
    res.set(http::field::server, "agentrt");
    res.keep_alive(false);
    res.body() = body;
    res.prepare_payload();
    beast::error_code ec;
    http::write(socket, res, ec);
  }

  static std::string error_json(const std::string& message, const std::string& type) {
    return nlohmann::json{{"error", {{"message", message}, {"type", type}}}}.dump();
  }

  void serve_connection(tcp::socket socket) {
    beast::error_code ec;
    beast::flat_buffer buffer;
    http::request_parser<http::string_body> parser;
    parser.body_limit(options.max_message_bytes);
    http::read(socket, buffer, parser, ec);
    if (ec) {
      if (ec == http::error::body_limit)
        respond(socket, http::status::payload_too_large,
                error_json("request body too large", "invalid_request_error"));
      return;
    }
    auto req = parser.release();
    const std::string target(req.target());
    ++metrics.http_requests;
    log(std::string(req.method_string()) + " " + target);
    if (!origin_allowed(req)) {
      respond(socket, http::status::forbidden, error_json("origin not allowed", "forbidden"));
      return;
    }
    const bool public_path = target == "/health";
    if (!public_path && !authorized(req)) {
      ++metrics.errors;
      respond(socket, http::status::unauthorized,
              error_json("missing or invalid API key", "authentication_error"));
      return;
    }
    if (beast::websocket::is_upgrade(req)) {
      if (target.rfind("/v1/sessions", 0) != 0) {
        respond(socket, http::status::not_found,
                error_json("WebSocket sessions live at /v1/sessions", "not_found"));
        return;
      }
      run_realtime_session(std::move(socket), req, buffer,
                           {backend, builtins, defaults, options, metrics, sessions, stopping});
      return;
    }
    if (req.method() == http::verb::get && target == "/health") {
      respond(socket, http::status::ok, R"({"status":"ok"})");
    } else if (req.method() == http::verb::get && target == "/v1/models") {
      respond(socket, http::status::ok,
              nlohmann::json{
                  {"object", "list"},
                  {"data",
                   {{{"id", options.model_name}, {"object", "model"}, {"owned_by", "agentrt"}}}}}
                  .dump());
    } else if (req.method() == http::verb::get && target == "/metrics") {
      respond(socket, http::status::ok, metrics.prometheus(), "text/plain; version=0.0.4");
    } else if (req.method() == http::verb::post && target == "/v1/chat/completions") {
      serve_chat_completion(socket, req.body(), {*backend, options.model_name, metrics});
    } else {
      respond(socket, http::status::not_found,
              error_json("no route for " + std::string(req.method_string()) + " " + target,
                         "not_found"));
    }
    socket.shutdown(tcp::socket::shutdown_send, ec);
  }
};

Server::Server(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> builtin_tools,
               AgentOptions defaults, ServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  impl_->backend = std::move(backend);
  impl_->builtins =
      builtin_tools ? std::move(builtin_tools) : std::make_shared<tools::ToolRegistry>();
  impl_->defaults = std::move(defaults);
  impl_->options = std::move(options);
}

Server::~Server() { stop(); }

const ServerMetrics& Server::metrics() const { return impl_->metrics; }

uint16_t Server::start() {
  Impl& s = *impl_;
  tcp::endpoint endpoint(asio::ip::make_address(s.options.host), s.options.port);
  s.acceptor = std::make_unique<tcp::acceptor>(s.io);
  s.acceptor->open(endpoint.protocol());
  s.acceptor->set_option(asio::socket_base::reuse_address(true));
  s.acceptor->bind(endpoint);
  s.acceptor->listen();
  const uint16_t port = s.acceptor->local_endpoint().port();
  s.log("listening on " + s.options.host + ":" + std::to_string(port));
  s.acceptor->non_blocking(true);
  s.accept_thread = std::thread([&s] {
    while (!s.stopping) {
      beast::error_code ec;
      tcp::socket socket(s.io);
      s.acceptor->accept(socket, ec);
      if (ec) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      socket.non_blocking(false);
      std::lock_guard lock(s.mutex);
      const int fd = socket.native_handle();
      s.live_fds.insert(fd);
      s.connections.emplace_back([&s, fd, sock = std::move(socket)]() mutable {
        s.serve_connection(std::move(sock));
        std::lock_guard l(s.mutex);
        s.live_fds.erase(fd);
      });
    }
  });
  return port;
}

void Server::stop() {
  Impl& s = *impl_;
  if (!s.acceptor || s.stopping.exchange(true)) return;
  s.log("shutting down: cancelling running sessions");
  if (s.accept_thread.joinable()) s.accept_thread.join();
  beast::error_code ec;
  s.acceptor->close(ec);
  s.sessions.cancel_all();
  {
    // Blocked reads of open connections return once their sockets are shut down.
    std::lock_guard lock(s.mutex);
    for (int fd : s.live_fds) ::shutdown(fd, SHUT_RDWR);
  }
  std::list<std::thread> threads;
  {
    std::lock_guard lock(s.mutex);
    threads.swap(s.connections);
  }
  for (auto& t : threads) {
    if (t.joinable()) t.join();
  }
}

}  // namespace agentrt::server
