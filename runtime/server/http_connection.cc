// Boost 1.74 Asio uses std::exchange without including <utility>.
#include "runtime/server/http_connection.h"

#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <utility>

#include "runtime/server/chat_completions.h"

namespace agentrt::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

std::string error_json(const std::string& message, const std::string& type) {
  return nlohmann::json{{"error", {{"message", message}, {"type", type}}}}.dump();
}

// Closes the sending side once the response is out: a TCP FIN, or a TLS close_notify first.
void shutdown_stream(PlainStream& s, std::function<void()> done) {
  beast::error_code ec;
  s.socket().shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  done();
}
void shutdown_stream(TlsStream& s, std::function<void()> done) {
  beast::get_lowest_layer(s).expires_after(std::chrono::seconds(2));
  s.async_shutdown([done = std::move(done)](beast::error_code) { done(); });
}

template <class Stream>
class HttpConnection final : public Closable,
                             public std::enable_shared_from_this<HttpConnection<Stream>> {
 public:
  HttpConnection(Stream stream, ServerContext& ctx) : stream_(std::move(stream)), ctx_(ctx) {}
  ~HttpConnection() override {
    if (registered_) ctx_.connections.remove(registry_id_);
  }

  void start() {
    auto self = this->shared_from_this();
    std::weak_ptr<HttpConnection> weak = self;
    const auto executor = stream_.get_executor();
    outbox_ = std::make_shared<Outbox>(ctx_.outbox_limits(), [weak, executor] {
      if (auto c = weak.lock()) asio::post(executor, [c] { c->write_next(); });
    });
    registry_id_ = ctx_.connections.add(weak);
    registered_ = true;
    parser_.emplace();
    parser_->body_limit(ctx_.options.max_message_bytes);
    beast::get_lowest_layer(stream_).expires_after(ctx_.options.request_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void close_gracefully(const std::string&) override {
    // A request still being read is dropped; a response in progress is finished (the work
    // tracker's grace period covers its generation).
    asio::post(stream_.get_executor(), [self = this->shared_from_this()] {
      if (!self->have_request_) beast::get_lowest_layer(self->stream_).close();
    });
  }

 private:
  void reply(unsigned status, const std::string& body,
             const std::string& type = "application/json") {
    outbox_->finish(1000, "", http_response(status, body, type));
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      have_request_ = true;
      ++ctx_.metrics.errors;
      reply(413, error_json("request body too large", "invalid_request_error"));
      return;
    }
    if (ec) return;  // closed, timed out or malformed: nothing to answer
    have_request_ = true;
    beast::get_lowest_layer(stream_).expires_never();
    auto req = parser_->release();
    const std::string target(req.target());
    ++ctx_.metrics.http_requests;
    ctx_.log(std::string(req.method_string()) + " " + target);
    if (const auto origin = req.find(http::field::origin); origin != req.end()) {
      bool allowed = false;
      for (const auto& o : ctx_.options.allowed_origins)
        allowed = allowed || o == origin->value() || o == "*";
      if (!allowed) {
        reply(403, error_json("origin not allowed", "forbidden"));
        return;
      }
    }
    std::string key;
    if (target != "/health" && !authorized(req, key)) {
      ++ctx_.metrics.errors;
      reply(401, error_json("missing or invalid API key", "authentication_error"));
      return;
    }
    if (beast::websocket::is_upgrade(req)) {
      if (target.rfind("/v1/sessions", 0) != 0) {
        reply(404, error_json("WebSocket sessions live at /v1/sessions", "not_found"));
        return;
      }
      // Clients speak only after the handshake answer, so the HTTP read left no frame bytes.
      outbox_->abort();
      start_realtime_session(std::move(stream_), std::move(req), ctx_, key);
      return;
    }
    if (req.method() == http::verb::get && target == "/health") {
      reply(200, ctx_.stopping ? R"({"status":"stopping"})" : R"({"status":"ok"})");
    } else if (req.method() == http::verb::get && target == "/v1/models") {
      reply(200,
            nlohmann::json{
                {"object", "list"},
                {"data",
                 {{{"id", ctx_.options.model_name}, {"object", "model"}, {"owned_by", "agentrt"}}}}}
                .dump());
    } else if (req.method() == http::verb::get && target == "/metrics") {
      reply(200, ctx_.metrics.prometheus(), "text/plain; version=0.0.4");
    } else if (req.method() == http::verb::post && target == "/v1/chat/completions") {
      start_completion(req.body(), key);
    } else {
      reply(404, error_json("no route for " + std::string(req.method_string()) + " " + target,
                            "not_found"));
    }
  }

  bool authorized(const http::request<http::string_body>& req, std::string& key) const {
    if (ctx_.options.api_keys.empty()) return true;
    const auto it = req.find(http::field::authorization);
    if (it == req.end()) return false;
    const std::string value(it->value());
    for (const auto& k : ctx_.options.api_keys) {
      if (value == "Bearer " + k) {
        key = k;
        return true;
      }
    }
    return false;
  }

  void start_completion(std::string body, const std::string& key) {
    if (ctx_.stopping) {
      reply(503, error_json("the server is shutting down", "unavailable"));
      return;
    }
    auto permit = ctx_.key_limits.try_acquire(key);
    if (!permit) {
      ++ctx_.metrics.rejected_requests;
      reply(429, error_json("this API key already runs " + std::to_string(ctx_.key_limits.limit()) +
                                " requests; retry when one finishes",
                            "rate_limit_error"));
      return;
    }
    auto outbox = outbox_;
    ServerContext& ctx = ctx_;
    // The work holds the connection: nothing else is pending on it while the model runs.
    ctx_.work.spawn(
        [self = this->shared_from_this(), outbox, &ctx, body = std::move(body), permit] {
          serve_chat_completion(body, {*ctx.backend, ctx.options.model_name, ctx.metrics},
                                [&](std::string bytes) {
                                  if (outbox->push_blocking(std::move(bytes))) return true;
                                  if (outbox->stalled()) ++ctx.metrics.slow_client_closes;
                                  return false;
                                });
          outbox->finish(1000, "");
        });
  }

  void write_next() {
    if (writing_ || closing_) return;
    if (auto message = outbox_->take()) {
      writing_ = true;
      current_ = std::move(*message);
      asio::async_write(stream_, asio::buffer(current_),
                        [self = this->shared_from_this()](beast::error_code ec, size_t) {
                          self->writing_ = false;
                          self->outbox_->written(self->current_.size());
                          if (ec) {
                            self->outbox_->abort();  // the generation sees a gone client
                            return;
                          }
                          self->write_next();
                        });
      return;
    }
    if (outbox_->drained_and_finished()) {
      closing_ = true;
      shutdown_stream(stream_, [self = this->shared_from_this()] {});
    }
  }

  Stream stream_;
  ServerContext& ctx_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::shared_ptr<Outbox> outbox_;
  std::string current_;
  bool writing_ = false, closing_ = false, registered_ = false, have_request_ = false;
  uint64_t registry_id_ = 0;
};

}  // namespace

template <class Stream>
void start_http_connection(Stream stream, ServerContext& ctx) {
  std::make_shared<HttpConnection<Stream>>(std::move(stream), ctx)->start();
}

template void start_http_connection<PlainStream>(PlainStream, ServerContext&);
template void start_http_connection<TlsStream>(TlsStream, ServerContext&);

}  // namespace agentrt::server
