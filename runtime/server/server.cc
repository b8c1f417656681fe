#include "runtime/server/server.h"

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <sstream>
#include <thread>
#include <utility>

#include "runtime/server/asio.h"
#include "runtime/server/http_connection.h"

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
  line("agentrt_rejected_requests_total", "refused by a limit (sessions, per-key requests)",
       "counter", rejected_requests);
  line("agentrt_slow_client_closes_total", "connections dropped for not reading", "counter",
       slow_client_closes);
  line("agentrt_timeout_closes_total", "sessions closed by the idle or total time limit", "counter",
       timeout_closes);
  line("agentrt_generation_latency_ms_sum", "sum of generation latencies", "counter",
       latency_ms_total);
  line("agentrt_generation_latency_count", "generations measured", "counter", latency_count);
  return o.str();
}

struct Server::Impl {
  // Declared first, destroyed last: connections (owned by handlers in `io`) refer to it.
  ServerContext ctx;
  asio::io_context io;
  std::optional<asio::ssl::context> tls;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<std::thread> io_threads;
  bool stopped = false;

  Impl(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> builtins,
       AgentOptions defaults, ServerOptions options)
      : ctx(std::move(backend), std::move(builtins), std::move(defaults), std::move(options)) {}

  void accept() {
    acceptor->async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
      if (ctx.stopping || !acceptor->is_open()) return;
      if (!ec) on_accepted(std::move(socket));
      accept();
    });
  }

  void on_accepted(tcp::socket socket) {
    if (!tls) {
      start_http_connection(PlainStream(std::move(socket)), ctx);
      return;
    }
    auto stream = std::make_shared<TlsStream>(PlainStream(std::move(socket)), *tls);
    beast::get_lowest_layer(*stream).expires_after(ctx.options.request_timeout);
    stream->async_handshake(asio::ssl::stream_base::server, [this, stream](beast::error_code ec) {
      if (ec) {
        ctx.log(std::string("TLS handshake failed: ") + ec.message());
        return;
      }
      start_http_connection(std::move(*stream), ctx);
    });
  }
};

Server::Server(std::shared_ptr<Backend> backend, std::shared_ptr<tools::ToolRegistry> builtin_tools,
               AgentOptions defaults, ServerOptions options)
    : impl_(std::make_unique<Impl>(
          std::move(backend),
          builtin_tools ? std::move(builtin_tools) : std::make_shared<tools::ToolRegistry>(),
          std::move(defaults), std::move(options))) {}

Server::~Server() { stop(); }

const ServerMetrics& Server::metrics() const { return impl_->ctx.metrics; }

uint16_t Server::start() {
  Impl& s = *impl_;
  const ServerOptions& o = s.ctx.options;
  if (o.tls_cert.empty() != o.tls_key.empty())
    throw std::invalid_argument("TLS needs both a certificate (--tls-cert) and a key (--tls-key)");
  if (!o.tls_cert.empty()) {
    s.tls.emplace(asio::ssl::context::tls_server);
    s.tls->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1);
    try {
      s.tls->use_certificate_chain_file(o.tls_cert);
    } catch (const std::exception& e) {
      throw std::runtime_error("TLS certificate " + o.tls_cert + ": " + e.what());
    }
    try {
      s.tls->use_private_key_file(o.tls_key, asio::ssl::context::pem);
    } catch (const std::exception& e) {
      throw std::runtime_error("TLS key " + o.tls_key + ": " + e.what());
    }
  }
  std::filesystem::create_directories(s.ctx.sessions.dir());
  tcp::endpoint endpoint(asio::ip::make_address(o.host), o.port);
  s.acceptor = std::make_unique<tcp::acceptor>(asio::make_strand(s.io));
  s.acceptor->open(endpoint.protocol());
  s.acceptor->set_option(asio::socket_base::reuse_address(true));
  s.acceptor->bind(endpoint);
  s.acceptor->listen(asio::socket_base::max_listen_connections);
  const uint16_t port = s.acceptor->local_endpoint().port();
  s.ctx.log("listening on " + std::string(s.tls ? "https://" : "http://") + o.host + ":" +
            std::to_string(port) + " (" + std::to_string(std::max<size_t>(1, o.io_threads)) +
            " io threads)");
  s.accept();
  for (size_t i = 0; i < std::max<size_t>(1, o.io_threads); ++i)
    s.io_threads.emplace_back([&s] { s.io.run(); });
  return port;
}

void Server::stop() {
  Impl& s = *impl_;
  if (!s.acceptor || s.stopped) return;
  s.stopped = true;
  ServerContext& ctx = s.ctx;
  ctx.stopping = true;
  asio::post(s.acceptor->get_executor(), [&s] {
    beast::error_code ec;
    s.acceptor->close(ec);
  });
  // Running turns may finish within the grace period; then the rest is cancelled (at the next
  // token or tool boundary) and every session checkpointed, so clients resume after a restart.
  const auto grace_end = std::chrono::steady_clock::now() + ctx.options.shutdown_grace;
  const size_t running = ctx.work.running();
  ctx.log("shutting down: " + std::to_string(running) + " running turns get " +
          std::to_string(ctx.options.shutdown_grace.count()) + " ms");
  if (!ctx.work.wait_idle(grace_end)) {
    ctx.log("grace period over: cancelling " + std::to_string(ctx.work.running()) + " turns");
    ctx.sessions.cancel_all("server shutting down");
    ctx.work.wait_idle(std::chrono::steady_clock::time_point::max());
  }
  try {
    ctx.sessions.checkpoint_all();
  } catch (const std::exception& e) {
    ctx.log(std::string("checkpoint failed: ") + e.what());
  }
  ctx.connections.close_all("server shutting down; resume with /v1/sessions?session_id=ID");
  ctx.connections.wait_empty(std::chrono::steady_clock::now() + std::chrono::seconds(3));
  s.io.stop();
  for (auto& t : s.io_threads) t.join();
  s.io_threads.clear();
  ctx.log("stopped");
}

}  // namespace agentrt::server
