// Boost 1.74 Asio uses std::exchange without including <utility>.
#include "runtime/server/realtime_session.h"

#include <array>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <filesystem>
#include <random>
#include <utility>

#include "runtime/server/turn_runner.h"

namespace agentrt::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;

namespace {

nlohmann::json error_event(const std::string& code, const std::string& message,
                           const std::string& event_id = "") {
  return {{"type", "error"},
          {"error", {{"code", code}, {"message", message}, {"event_id", event_id}}}};
}

std::string dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

template <class Stream>
class RealtimeConnection final : public Closable,
                                 public std::enable_shared_from_this<RealtimeConnection<Stream>> {
 public:
  RealtimeConnection(Stream stream, ServerContext& ctx, std::string api_key)
      : ws_(std::move(stream)),
        ctx_(ctx),
        api_key_(std::move(api_key)),
        idle_timer_(ws_.get_executor()),
        life_timer_(ws_.get_executor()),
        close_timer_(ws_.get_executor()) {}

  ~RealtimeConnection() override {
    if (registered_) ctx_.connections.remove(registry_id_);
  }

  void start(beast::http::request<beast::http::string_body> req) {
    auto self = this->shared_from_this();
    std::weak_ptr<RealtimeConnection> weak = self;
    const auto executor = ws_.get_executor();
    outbox_ = std::make_shared<Outbox>(ctx_.outbox_limits(), [weak, executor] {
      if (auto c = weak.lock()) asio::post(executor, [c] { c->write_next(); });
    });
    registry_id_ = ctx_.connections.add(weak);
    registered_ = true;
    target_ = std::string(req.target());
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    // The message limit is enforced here, piece by piece (do_read), rather than by Beast's
    // read_message_max: Beast fails the connection and closes the socket while the client may
    // still be sending the oversized frame, which then sees a reset instead of close code 1009.
    ws_.read_message_max(0);
    ws_.async_accept(req, [self](beast::error_code ec) { self->on_accept(ec); });
  }

  void close_gracefully(const std::string& reason) override {
    asio::post(ws_.get_executor(), [self = this->shared_from_this(), reason] {
      self->outbox_->finish(static_cast<uint16_t>(websocket::close_code::going_away), reason);
    });
  }

 private:
  void on_accept(beast::error_code ec) {
    if (ec) return;
    const bool resume = target_.find("session_id=") != std::string::npos;
    bool taken_over = false;
    if (resume) {
      const std::string id = target_.substr(target_.find("session_id=") + 11);
      state_ = ctx_.sessions.find(id, ctx_.defaults, *ctx_.builtins);
      if (state_) {
        // A resume takes the session over from a connection that still holds it: usually one
        // whose client is gone without the server having seen it yet (no FIN). That connection
        // is closed and its turn cancelled; it no longer touches the session.
        std::shared_ptr<Closable> previous;
        {
          std::lock_guard lock(state_->mutex);
          if (state_->attached) {
            previous = state_->holder.lock();
            state_->cancel_turn_locked("session resumed on another connection");
            taken_over = true;
          }
          state_->attached = true;
          state_->holder = std::static_pointer_cast<Closable>(this->shared_from_this());
        }
        if (previous) previous->close_gracefully("session resumed on another connection");
      } else {
        refuse("session_not_found", "no session " + id + " (expired?)");
        return;
      }
    } else {
      if (ctx_.stopping) {
        refuse("server_shutting_down", "the server is shutting down",
               websocket::close_code::going_away);
        return;
      }
      if (ctx_.sessions.size() >= ctx_.options.max_sessions) {
        ++ctx_.metrics.rejected_requests;
        refuse("too_many_sessions", "the server's session limit is reached",
               websocket::close_code::try_again_later);
        return;
      }
      state_ = ctx_.sessions.create(ctx_.defaults);
      {
        std::lock_guard lock(state_->mutex);
        state_->holder = std::static_pointer_cast<Closable>(this->shared_from_this());
      }
      ++ctx_.metrics.sessions_total;
    }
    ++ctx_.metrics.sessions_open;
    counted_open_ = true;
    ctx_.log("session " + state_->id + (resume ? " resumed" : " created"));
    send({{"type", "session.created"},
          {"session", {{"id", state_->id}, {"resumed", resume}, {"taken_over", taken_over}}}});
    arm_idle_timer();
    if (ctx_.options.max_session_time.count() > 0) {
      life_timer_.expires_after(ctx_.options.max_session_time);
      life_timer_.async_wait([self = this->shared_from_this()](beast::error_code e) {
        if (!e)
          self->close_for_limit("session_time_limit",
                                "session time limit of " +
                                    std::to_string(ctx_ms(self->ctx_.options.max_session_time)) +
                                    " ms reached",
                                websocket::close_code::policy_error);
      });
    }
    do_read();
  }

  static long long ctx_ms(std::chrono::milliseconds d) { return d.count(); }

  void refuse(const std::string& code, const std::string& message,
              websocket::close_code close = websocket::close_code::policy_error) {
    send(error_event(code, message));
    outbox_->finish(static_cast<uint16_t>(close), message);
  }

  void send(const nlohmann::json& event) { outbox_->push(dump(event)); }

  void arm_idle_timer() {
    if (ctx_.options.idle_timeout.count() <= 0) return;
    idle_timer_.expires_after(ctx_.options.idle_timeout);
    idle_timer_.async_wait([self = this->shared_from_this()](beast::error_code e) {
      if (e) return;  // re-armed or closed
      bool busy;
      {
        std::lock_guard lock(self->state_->mutex);
        busy = self->state_->turn_active;
      }
      if (busy) {
        self->arm_idle_timer();  // a running turn is not idleness
        return;
      }
      self->close_for_limit("idle_timeout",
                            "idle timeout: no client event for " +
                                std::to_string(ctx_ms(self->ctx_.options.idle_timeout)) + " ms",
                            websocket::close_code::going_away);
    });
  }

  void close_for_limit(const std::string& code, const std::string& message,
                       websocket::close_code close) {
    ++ctx_.metrics.timeout_closes;
    ctx_.log("session " + state_->id + " closed: " + message);
    {
      std::lock_guard lock(state_->mutex);
      if (holds_locked()) state_->cancel_turn_locked(message);
    }
    outbox_->finish(static_cast<uint16_t>(close), message, dump(error_event(code, message)));
  }

  void do_read() {
    ws_.async_read_some(
        buffer_, 64 * 1024,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec) {
      on_closed(ec);
      return;
    }
    if (buffer_.size() > ctx_.options.max_message_bytes) {
      // async_close discards the rest of the frame while it waits for the client's close.
      ++ctx_.metrics.errors;
      ctx_.log("session " + (state_ ? state_->id : std::string("?")) + " closed: message over " +
               std::to_string(ctx_.options.max_message_bytes) + " bytes");
      buffer_.consume(buffer_.size());
      outbox_->finish(
          static_cast<uint16_t>(websocket::close_code::too_big),
          "message larger than " + std::to_string(ctx_.options.max_message_bytes) + " bytes");
      do_read();  // completes with `closed` once the close handshake is done
      return;
    }
    if (!ws_.is_message_done()) {
      do_read();
      return;
    }
    const std::string text = beast::buffers_to_string(buffer_.data());
    buffer_.consume(buffer_.size());
    arm_idle_timer();
    handle(text);
    do_read();
  }

  // Under state_->mutex: whether this connection still holds its session.
  bool holds_locked() const {
    return state_->holder.lock().get() == static_cast<const Closable*>(this);
  }

  void handle(const std::string& text) {
    std::string event_id;
    {
      std::lock_guard lock(state_->mutex);
      if (!holds_locked()) {
        send(error_event("session_taken_over",
                         "session " + state_->id + " was resumed on another connection"));
        return;
      }
    }
    try {
      const ClientEvent event = parse_client_event(text);
      event_id = event.event_id;
      switch (event.type) {
        case ClientEventType::session_update: {
          const auto raw =
              event.body.contains("session") ? event.body["session"] : nlohmann::json::object();
          const SessionUpdate update = parse_session_update(raw);
          std::lock_guard lock(state_->mutex);
          state_->apply_locked(update, raw, *ctx_.builtins);
          SessionDirectory::checkpoint(*state_);
          send({{"type", "session.updated"}, {"event_id", event_id}});
          break;
        }
        case ClientEventType::item_create: {
          if (!event.body.contains("item"))
            throw std::invalid_argument("invalid_event: conversation.item.create needs an item");
          const ConversationItem item = parse_conversation_item(event.body["item"]);
          std::lock_guard lock(state_->mutex);
          if (item.kind == ConversationItem::Kind::function_call_output) {
            auto it = state_->waiting.find(item.call_id);
            if (it == state_->waiting.end())
              throw std::invalid_argument("unknown_call: no pending client-side call " +
                                          item.call_id);
            it->second->set_value(item.text);
            state_->waiting.erase(it);
          } else {
            state_->pending_user.push_back(item.text);
          }
          break;
        }
        case ClientEventType::response_create:
          start_response(event_id);
          break;
        case ClientEventType::response_cancel: {
          std::lock_guard lock(state_->mutex);
          state_->cancel_turn_locked("cancelled");
          break;
        }
      }
    } catch (const std::exception& e) {
      ++ctx_.metrics.errors;
      const std::string what = e.what();
      const auto colon = what.find(": ");
      const std::string code = colon != std::string::npos && what.find(' ') > colon
                                   ? what.substr(0, colon)
                                   : "invalid_event";
      send(error_event(code, what, event_id));
    }
  }

  void start_response(const std::string& event_id) {
    if (ctx_.stopping)
      throw std::invalid_argument("server_shutting_down: no new responses while shutting down");
    {
      std::lock_guard lock(state_->mutex);
      if (state_->turn_active)
        throw std::invalid_argument("response_in_progress: a response is already running");
      if (state_->pending_user.empty())
        throw std::invalid_argument("no_input: add a user message first");
    }
    auto permit = ctx_.key_limits.try_acquire(api_key_);
    if (!permit) {
      ++ctx_.metrics.rejected_requests;
      throw std::invalid_argument("rate_limited: this API key already runs " +
                                  std::to_string(ctx_.key_limits.limit()) +
                                  " requests; retry when one finishes");
    }
    {
      std::lock_guard lock(state_->mutex);
      state_->turn_active = true;
    }
    ctx_.log("session " + state_->id + " response started");
    auto outbox = outbox_;
    auto state = state_;
    ServerContext& ctx = ctx_;
    ctx_.work.spawn([outbox, state, &ctx, event_id, permit] {
      run_turn(state, *outbox, ctx, event_id);
      ctx.log("session " + state->id + " response finished");
    });
  }

  void write_next() {
    if (writing_ || closing_) return;
    if (auto message = outbox_->take()) {
      writing_ = true;
      current_ = std::move(*message);
      ws_.text(true);
      ws_.async_write(asio::buffer(current_),
                      [self = this->shared_from_this()](beast::error_code ec, size_t) {
                        self->writing_ = false;
                        self->outbox_->written(self->current_.size());
                        if (ec) {
                          self->outbox_->abort();
                          return;  // the read side sees the failure too and cleans up
                        }
                        self->write_next();
                      });
      return;
    }
    if (outbox_->drained_and_finished()) start_close();
  }

  void start_close() {
    closing_ = true;
    if (outbox_->stalled() && state_)
      ctx_.log("session " + state_->id + " closed: " + outbox_->close_reason());
    // A client that does not answer the close handshake loses the socket after a while.
    close_timer_.expires_after(std::chrono::seconds(5));
    close_timer_.async_wait([self = this->shared_from_this()](beast::error_code e) {
      if (!e) beast::get_lowest_layer(self->ws_).close();
    });
    ws_.async_close(
        websocket::close_reason(static_cast<websocket::close_code>(outbox_->close_code()),
                                outbox_->close_reason()),
        [self = this->shared_from_this()](beast::error_code) {});
  }

  void on_closed(beast::error_code) {
    idle_timer_.cancel();
    life_timer_.cancel();
    close_timer_.cancel();
    outbox_->abort();
    if (!state_) return;
    {
      // A client that disconnects cancels its generation (the turn's Session then frees its
      // cache); the state stays for a resume within the grace period.
      std::lock_guard lock(state_->mutex);
      if (holds_locked()) {  // else a resume has taken the session over
        state_->cancel_turn_locked("client disconnected");
        state_->attached = false;
        state_->holder.reset();
        state_->detached_at = std::chrono::steady_clock::now();
      }
    }
    if (counted_open_) --ctx_.metrics.sessions_open;
    counted_open_ = false;
    ctx_.log("session " + state_->id + " disconnected");
  }

  websocket::stream<Stream> ws_;
  ServerContext& ctx_;
  std::string api_key_;
  std::string target_;
  std::shared_ptr<Outbox> outbox_;
  std::shared_ptr<SessionState> state_;
  beast::flat_buffer buffer_;
  std::string current_;
  bool writing_ = false, closing_ = false, registered_ = false, counted_open_ = false;
  uint64_t registry_id_ = 0;
  asio::steady_timer idle_timer_, life_timer_, close_timer_;
};

}  // namespace

template <class Stream>
void start_realtime_session(Stream stream, beast::http::request<beast::http::string_body> req,
                            ServerContext& ctx, std::string api_key) {
  beast::get_lowest_layer(stream).expires_never();  // the WebSocket has its own timeouts
  std::make_shared<RealtimeConnection<Stream>>(std::move(stream), ctx, std::move(api_key))
      ->start(std::move(req));
}

template void start_realtime_session<PlainStream>(PlainStream,
                                                  beast::http::request<beast::http::string_body>,
                                                  ServerContext&, std::string);
template void start_realtime_session<TlsStream>(TlsStream,
                                                beast::http::request<beast::http::string_body>,
                                                ServerContext&, std::string);

}  // namespace agentrt::server
