// Serving limits against a real server on 127.0.0.1: backpressure on a client that stops
// reading, a disconnect cancelling its generation and freeing its cache, per-key request limits,
// idle and total session time, the session limit, TLS, and graceful shutdown with checkpoints
// that a restarted server resumes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <filesystem>
#include <thread>
#include <utility>

#include "runtime/server/asio.h"
#include "runtime/server/server.h"

namespace agentrt::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// Streams `deltas` pieces of `piece_bytes` each, `delay` apart, until cancelled; records what it
// saw (cancellation, released caches, the system prompt).
class Streaming : public Backend {
 public:
  Streaming(int deltas, size_t piece_bytes, std::chrono::milliseconds delay)
      : deltas_(deltas), piece_(piece_bytes, 'x'), delay_(delay) {}
  std::string name() const override { return "streaming"; }
  GenerationResult generate(const GenerationRequest& request, const GenerationCallback& on_event,
                            const std::atomic<bool>* cancel, std::string_view) override {
    if (!request.messages.empty() && request.messages[0].role == chat::Message::Role::system) {
      std::lock_guard lock(mutex_);
      system_prompt_ = request.messages[0].content;
    }
    GenerationResult r;
    r.message.role = chat::Message::Role::assistant;
    for (int i = 0; i < deltas_; ++i) {
      if (cancel && cancel->load()) {
        cancelled_ = true;
        r.finish = FinishReason::cancelled;
        return r;
      }
      ++produced_;
      if (on_event) on_event({chat::ParseEvent::Kind::content_delta, -1, piece_, "", ""});
      if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    }
    r.message.content = "done";
    return r;
  }
  void release_cache(std::string_view key) override {
    if (!key.empty()) ++released_;
  }
  std::string system_prompt() {
    std::lock_guard lock(mutex_);
    return system_prompt_;
  }
  std::atomic<bool> cancelled_{false};
  std::atomic<int> produced_{0}, released_{0};

 private:
  int deltas_;
  std::string piece_;
  std::chrono::milliseconds delay_;
  std::mutex mutex_;
  std::string system_prompt_;
};

std::filesystem::path sessions_dir() {
  return std::filesystem::temp_directory_path() /
         ("agentrt-limits-test-" + std::to_string(::getpid()));
}

// The sessions directory these tests share (one a process) goes when the process's tests end,
// however they end: CTest runs each test in its own process, so it would leave one a test.
class RemoveSessionsDir : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(sessions_dir(), ec);
  }
};
[[maybe_unused]] const auto* const kRemoveSessionsDir =
    ::testing::AddGlobalTestEnvironment(new RemoveSessionsDir);

ServerOptions quiet_options() {
  ServerOptions o;
  o.port = 0;
  o.log = false;
  o.sessions_dir = sessions_dir();
  return o;
}

template <class Next>
struct Ws {
  asio::io_context io;
  std::optional<asio::ssl::context> tls;
  std::unique_ptr<websocket::stream<Next>> ws;
  nlohmann::json next() {
    beast::flat_buffer b;
    ws->read(b);
    return nlohmann::json::parse(beast::buffers_to_string(b.data()));
  }
  nlohmann::json until(const std::string& type) {
    for (;;)
      if (auto e = next(); e["type"] == type) return e;
  }
  void send(const nlohmann::json& j) { ws->write(asio::buffer(j.dump())); }
  void ask(const std::string& text) {
    send(
        {{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"content", text}}}});
    send({{"type", "response.create"}});
  }
  // Reads until the server closes; returns the close reason.
  websocket::close_reason read_to_close(std::vector<nlohmann::json>* seen = nullptr) {
    for (;;) {
      beast::flat_buffer b;
      beast::error_code ec;
      ws->read(b, ec);
      if (ec) return ws->reason();
      if (seen) seen->push_back(nlohmann::json::parse(beast::buffers_to_string(b.data())));
    }
  }
};

std::unique_ptr<Ws<tcp::socket>> connect(uint16_t port, const std::string& target = "/v1/sessions",
                                         const std::string& key = "") {
  auto c = std::make_unique<Ws<tcp::socket>>();
  c->ws = std::make_unique<websocket::stream<tcp::socket>>(c->io);
  c->ws->next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  c->ws->set_option(websocket::stream_base::decorator([key](websocket::request_type& req) {
    if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
  }));
  c->ws->handshake("127.0.0.1", target);
  return c;
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

TEST(ServerLimits, ClientThatStopsReadingPausesThenLosesItsConnection) {
  auto backend = std::make_shared<Streaming>(200000, 1024, 0ms);
  auto o = quiet_options();
  o.max_outbox_bytes = 64 * 1024;
  o.slow_client_timeout = 300ms;
  Server server(backend, nullptr, AgentOptions{}, o);
  const uint16_t port = server.start();
  auto c = connect(port);
  c->next();
  c->ask("stream a lot");
  // The client reads nothing: the generation stalls on the full queue, then is cancelled.
  ASSERT_TRUE(eventually([&] { return backend->cancelled_.load(); }));
  EXPECT_EQ(server.metrics().slow_client_closes.load(), 1);
  // It produced what the queue and the socket buffers hold, not all 200 MB.
  EXPECT_LT(backend->produced_.load(), 20000);
  std::vector<nlohmann::json> seen;
  const auto reason = c->read_to_close(&seen);
  EXPECT_EQ(reason.code, websocket::close_code::policy_error);
  EXPECT_NE(std::string(reason.reason.c_str()).find("client too slow"), std::string::npos);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back()["error"]["code"], "client_too_slow");
  EXPECT_TRUE(eventually([&] { return backend->released_.load() > 0; }));
  server.stop();
}

TEST(ServerLimits, DisconnectCancelsTheGenerationAndFreesItsCache) {
  auto backend = std::make_shared<Streaming>(100000, 16, 1ms);
  Server server(backend, nullptr, AgentOptions{}, quiet_options());
  const uint16_t port = server.start();
  {
    auto c = connect(port);
    c->next();
    c->ask("go");
    c->until("response.output_text.delta");
    beast::get_lowest_layer(*c->ws).close();  // drop the connection mid-generation
  }
  EXPECT_TRUE(eventually([&] { return backend->cancelled_.load(); }));
  EXPECT_TRUE(eventually([&] { return backend->released_.load() > 0; }));
  server.stop();
}

TEST(ServerLimits, ConcurrentRequestsPerKeyAreLimited) {
  auto backend = std::make_shared<Streaming>(100000, 16, 1ms);
  auto o = quiet_options();
  o.api_keys = {"k1", "k2"};
  o.max_requests_per_key = 1;
  Server server(backend, nullptr, AgentOptions{}, o);
  const uint16_t port = server.start();
  auto a = connect(port, "/v1/sessions", "k1");
  a->next();
  a->ask("long");
  a->until("response.output_text.delta");
  auto b = connect(port, "/v1/sessions", "k1");
  b->next();
  b->send(
      {{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"content", "x"}}}});
  b->send({{"type", "response.create"}, {"event_id", "ev1"}});
  const auto e = b->until("error");
  EXPECT_EQ(e["error"]["code"], "rate_limited");
  EXPECT_EQ(e["error"]["event_id"], "ev1");
  // HTTP: 429 for the same key; another key is not limited by k1's work.
  asio::io_context io;
  // Streaming answers with headers at once (this backend would take minutes to finish).
  const auto post = [&](const std::string& key) {
    tcp::socket s(io);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::authorization, "Bearer " + key);
    req.body() = R"({"messages":[{"role":"user","content":"hi"}],"stream":true})";
    req.prepare_payload();
    http::write(s, req);
    beast::flat_buffer buf;
    http::response_parser<http::empty_body> res;
    res.skip(true);
    http::read_header(s, buf, res);
    return res.get().result();
  };
  EXPECT_EQ(post("k1"), http::status::too_many_requests);
  EXPECT_EQ(post("k2"), http::status::ok);
  a->send({{"type", "response.cancel"}});
  EXPECT_EQ(a->until("response.done")["response"]["status"], "cancelled");
  server.stop();
}

TEST(ServerLimits, IdleAndTotalTimeCloseWithAReason) {
  auto backend = std::make_shared<Streaming>(1, 4, 0ms);
  auto o = quiet_options();
  o.idle_timeout = 200ms;
  {
    Server server(backend, nullptr, AgentOptions{}, o);
    auto c = connect(server.start());
    c->next();
    std::vector<nlohmann::json> seen;
    const auto reason = c->read_to_close(&seen);
    EXPECT_EQ(reason.code, websocket::close_code::going_away);
    EXPECT_NE(std::string(reason.reason.c_str()).find("idle timeout"), std::string::npos);
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back()["error"]["code"], "idle_timeout");
  }
  o.idle_timeout = 0ms;
  o.max_session_time = 300ms;
  Server server(backend, nullptr, AgentOptions{}, o);
  auto c = connect(server.start());
  c->next();
  std::vector<nlohmann::json> seen;
  const auto reason = c->read_to_close(&seen);
  EXPECT_EQ(reason.code, websocket::close_code::policy_error);
  EXPECT_NE(std::string(reason.reason.c_str()).find("session time limit"), std::string::npos);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back()["error"]["code"], "session_time_limit");
  EXPECT_EQ(server.metrics().timeout_closes.load(), 1);
}

TEST(ServerLimits, SessionLimitRefusesWithTryAgainLater) {
  auto o = quiet_options();
  o.max_sessions = 1;
  Server server(std::make_shared<Streaming>(1, 4, 0ms), nullptr, AgentOptions{}, o);
  const uint16_t port = server.start();
  auto first = connect(port);
  EXPECT_EQ(first->next()["type"], "session.created");
  auto second = connect(port);
  EXPECT_EQ(second->next()["error"]["code"], "too_many_sessions");
  EXPECT_EQ(second->read_to_close().code, websocket::close_code::try_again_later);
}

TEST(ServerLimits, TlsServesHttpsAndWss) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("agentrt-tls-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl CLI not available";
  auto o = quiet_options();
  o.tls_cert = cert;
  o.tls_key = key;
  Server server(std::make_shared<Streaming>(2, 4, 0ms), nullptr, AgentOptions{}, o);
  const uint16_t port = server.start();
  using TlsSocket = beast::ssl_stream<tcp::socket>;
  Ws<TlsSocket> c;
  c.tls.emplace(asio::ssl::context::tls_client);
  c.tls->load_verify_file(cert);  // the self-signed certificate is its own CA
  c.tls->set_verify_mode(asio::ssl::verify_peer);
  c.ws = std::make_unique<websocket::stream<TlsSocket>>(c.io, *c.tls);
  beast::get_lowest_layer(*c.ws).connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  c.ws->next_layer().handshake(asio::ssl::stream_base::client);
  c.ws->handshake("localhost", "/v1/sessions");
  EXPECT_EQ(c.next()["type"], "session.created");
  c.ask("hi");
  EXPECT_EQ(c.until("response.done")["response"]["output_text"], "done");
  // A plain-text client gets no HTTP answer from a TLS port.
  tcp::socket plain(c.io);
  plain.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  asio::write(plain, asio::buffer(std::string("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")));
  beast::error_code ec;
  char byte;
  const size_t n = asio::read(plain, asio::buffer(&byte, 1), ec);
  EXPECT_TRUE(ec || byte != 'H') << n;
  std::filesystem::remove_all(dir);
}

TEST(ServerLimits, ShutdownFinishesShortTurnsCheckpointsLongOnesAndARestartResumes) {
  auto o = quiet_options();
  std::filesystem::remove_all(o.sessions_dir);
  // A turn shorter than the grace period completes before the connection closes.
  {
    auto o1 = o;
    o1.shutdown_grace = 5000ms;
    Server server(std::make_shared<Streaming>(5, 4, 60ms), nullptr, AgentOptions{}, o1);
    auto c = connect(server.start());
    c->next();
    c->ask("short");
    c->until("response.created");
    std::thread stopper([&] { server.stop(); });
    std::vector<nlohmann::json> seen;
    const auto reason = c->read_to_close(&seen);
    stopper.join();
    EXPECT_EQ(reason.code, websocket::close_code::going_away);
    bool completed = false;
    for (const auto& e : seen)
      completed =
          completed || (e["type"] == "response.done" && e["response"]["status"] == "completed");
    EXPECT_TRUE(completed);
  }
  // A longer one is cancelled after the grace period; the session survives a restart.
  std::string id;
  {
    auto o1 = o;
    o1.shutdown_grace = 150ms;
    Server server(std::make_shared<Streaming>(100000, 4, 1ms), nullptr, AgentOptions{}, o1);
    auto c = connect(server.start());
    id = c->next()["session"]["id"];
    c->send({{"type", "session.update"}, {"session", {{"instructions", "remember me"}}}});
    c->ask("long");
    c->until("response.output_text.delta");
    std::thread stopper([&] { server.stop(); });
    std::vector<nlohmann::json> seen;
    const auto reason = c->read_to_close(&seen);
    stopper.join();
    EXPECT_EQ(reason.code, websocket::close_code::going_away);
    bool cancelled = false;
    for (const auto& e : seen)
      cancelled =
          cancelled || (e["type"] == "response.done" && e["response"]["status"] == "cancelled");
    EXPECT_TRUE(cancelled);
  }
  auto backend = std::make_shared<Streaming>(2, 4, 0ms);
  Server restarted(backend, nullptr, AgentOptions{}, o);
  auto c = connect(restarted.start(), "/v1/sessions?session_id=" + id);
  const auto created = c->next();
  ASSERT_EQ(created["type"], "session.created") << created;
  EXPECT_TRUE(created["session"]["resumed"].get<bool>());
  c->ask("again");
  EXPECT_EQ(c->until("response.done")["response"]["output_text"], "done");
  EXPECT_EQ(backend->system_prompt(), "remember me");  // settings came back from the checkpoint
  restarted.stop();
  std::filesystem::remove_all(o.sessions_dir);
}

}  // namespace
}  // namespace agentrt::server
