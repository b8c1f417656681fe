// Protocol tests: a real Beast HTTP/WebSocket client against the server on 127.0.0.1, with a
// scripted backend for exact sequences.
#include "runtime/server/server.h"

#include <gtest/gtest.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

#include "runtime/server/asio.h"

namespace agentrt::server {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

class Scripted : public Backend {
 public:
  explicit Scripted(std::deque<chat::Message> script) : script_(std::move(script)) {}
  std::string name() const override { return "scripted"; }
  GenerationResult generate(const GenerationRequest&, const GenerationCallback& on_event,
                            const std::atomic<bool>* cancel, std::string_view) override {
    std::lock_guard lock(mutex_);
    GenerationResult r;
    if ((cancel && cancel->load()) || script_.empty()) {
      r.finish = script_.empty() ? FinishReason::error : FinishReason::cancelled;
      r.error = "script exhausted";
      return r;
    }
    r.message = script_.front();
    script_.pop_front();
    if (on_event && !r.message.content.empty())
      on_event({chat::ParseEvent::Kind::content_delta, -1, r.message.content, "", ""});
    for (size_t i = 0; i < r.message.tool_calls.size(); ++i) {
      const auto& c = r.message.tool_calls[i];
      if (!on_event) continue;
      on_event({chat::ParseEvent::Kind::tool_call_start, static_cast<int>(i), "", c.id, c.name});
      on_event({chat::ParseEvent::Kind::tool_call_arguments_delta, static_cast<int>(i),
                c.arguments_json, c.id, c.name});
      on_event({chat::ParseEvent::Kind::tool_call_end, static_cast<int>(i), c.arguments_json, c.id,
                c.name});
    }
    r.finish = r.message.tool_calls.empty() ? FinishReason::stop : FinishReason::tool_calls;
    r.usage = {7, 3, 0};
    return r;
  }

 private:
  std::mutex mutex_;
  std::deque<chat::Message> script_;
};

chat::Message call(const std::string& id, const std::string& name, const std::string& args) {
  chat::Message m;
  m.role = chat::Message::Role::assistant;
  m.tool_calls.push_back({id, name, args});
  return m;
}
chat::Message say(const std::string& text) {
  chat::Message m;
  m.role = chat::Message::Role::assistant;
  m.content = text;
  return m;
}

struct Fixture {
  std::unique_ptr<Server> server;
  uint16_t port = 0;
  Fixture(std::deque<chat::Message> script, std::vector<std::string> keys = {"sekret"}) {
    auto tools = std::make_shared<tools::ToolRegistry>();
    tools->add(
        {"add", "a+b",
         nlohmann::ordered_json::parse(
             R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]})")},
        [](const nlohmann::json& a, const tools::ToolContext&) {
          tools::ToolResult r;
          r.content = std::to_string(a["a"].get<int>() + a["b"].get<int>());
          return r;
        });
    ServerOptions options;
    options.port = 0;
    options.api_keys = std::move(keys);
    options.log = false;
    options.max_message_bytes = 64 * 1024;
    options.client_tool_timeout = std::chrono::milliseconds(3000);
    server = std::make_unique<Server>(std::make_shared<Scripted>(std::move(script)), tools,
                                      AgentOptions{}, options);
    port = server->start();
  }
  ~Fixture() { server->stop(); }

  http::response<http::string_body> request(http::verb verb, const std::string& target,
                                            const std::string& body = "", bool auth = true) {
    asio::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (auth) req.set(http::field::authorization, "Bearer sekret");
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
    http::write(socket, req);
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    beast::error_code ec;
    http::read(socket, buffer, res, ec);
    return res;
  }
};

struct WsClient {
  asio::io_context io;
  websocket::stream<tcp::socket> ws{io};
  explicit WsClient(uint16_t port, const std::string& target = "/v1/sessions",
                    const std::string& key = "sekret") {
    ws.next_layer().connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    ws.set_option(websocket::stream_base::decorator([key](websocket::request_type& req) {
      if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
    }));
    ws.handshake("127.0.0.1", target);
  }
  void send(const nlohmann::json& j) { ws.write(asio::buffer(j.dump())); }
  nlohmann::json next() {
    beast::flat_buffer b;
    ws.read(b);
    return nlohmann::json::parse(beast::buffers_to_string(b.data()));
  }
  nlohmann::json until(const std::string& type, std::vector<nlohmann::json>* seen = nullptr) {
    for (;;) {
      auto e = next();
      if (seen) seen->push_back(e);
      if (e["type"] == type) return e;
    }
  }
};

const std::string kTools =
    R"([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])";

TEST(ServerHttp, HealthModelsAuthAndMetrics) {
  Fixture f({});
  EXPECT_EQ(f.request(http::verb::get, "/health", "", false).result(), http::status::ok);
  EXPECT_EQ(f.request(http::verb::get, "/v1/models", "", false).result(),
            http::status::unauthorized);
  const auto models = nlohmann::json::parse(f.request(http::verb::get, "/v1/models").body());
  EXPECT_EQ(models["data"][0]["id"], "agentrt");
  EXPECT_NE(f.request(http::verb::get, "/metrics").body().find("agentrt_http_requests_total"),
            std::string::npos);
  EXPECT_EQ(f.request(http::verb::post, "/v1/chat/completions", "{not json").result(),
            http::status::bad_request);
  EXPECT_EQ(f.request(http::verb::get, "/nope").result(), http::status::not_found);
}

TEST(ServerHttp, ChatCompletionWithToolCalls) {
  Fixture f({call("call_1", "get_weather", R"({"city": "Paris"})")});
  const auto res =
      f.request(http::verb::post, "/v1/chat/completions",
                R"({"model":"agentrt","messages":[{"role":"user","content":"weather?"}],"tools":)" +
                    kTools + R"(,"tool_choice":"required"})");
  ASSERT_EQ(res.result(), http::status::ok) << res.body();
  const auto j = nlohmann::json::parse(res.body());
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(j["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 7);
}

TEST(ServerHttp, StreamingSendsSseChunksAndDone) {
  Fixture f({call("call_9", "get_weather", R"({"city": "Oslo"})")});
  const auto res = f.request(http::verb::post, "/v1/chat/completions",
                             R"({"messages":[{"role":"user","content":"w"}],"tools":)" + kTools +
                                 R"(,"stream":true,"stream_options":{"include_usage":true}})");
  const std::string body = res.body();
  EXPECT_NE(
      body.find(
          R"("tool_calls":[{"function":{"arguments":"","name":"get_weather"},"id":"call_9","index":0,"type":"function"}])"),
      std::string::npos)
      << body;
  EXPECT_NE(body.find(R"("finish_reason":"tool_calls")"), std::string::npos);
  EXPECT_NE(body.find(R"("usage":)"), std::string::npos);
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos);
}

TEST(ServerWebSocket, MultiStepSessionWithServerSideTools) {
  Fixture f({call("c1", "add", R"({"a": 2, "b": 3})"), say("It is 5."), say("Still 5.")});
  WsClient c(f.port);
  const auto created = c.next();
  ASSERT_EQ(created["type"], "session.created");
  c.send({{"type", "session.update"},
          {"session",
           {{"instructions", "math"}, {"tools", {{{"type", "builtin"}, {"name", "add"}}}}}}});
  EXPECT_EQ(c.next()["type"], "session.updated");
  c.send({{"type", "conversation.item.create"},
          {"item",
           {{"type", "message"},
            {"role", "user"},
            {"content", {{{"type", "input_text"}, {"text", "2+3?"}}}}}}});
  c.send({{"type", "response.create"}, {"event_id", "e1"}});
  std::vector<nlohmann::json> seen;
  const auto done = c.until("response.done", &seen);
  EXPECT_EQ(done["response"]["output_text"], "It is 5.");
  bool tool_result = false;
  for (const auto& e : seen)
    tool_result = tool_result || (e["type"] == "response.tool_result" && e["output"] == "5");
  EXPECT_TRUE(tool_result);
  // A second turn in the same session keeps the conversation.
  c.send({{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"role", "user"}, {"content", "again?"}}}});
  c.send({{"type", "response.create"}});
  EXPECT_EQ(c.until("response.done")["response"]["output_text"], "Still 5.");
}

TEST(ServerWebSocket, ClientSideToolsPauseTheLoopUntilTheClientAnswers) {
  Fixture f({call("c7", "lookup", R"({"q": "x"})"), say("The client said 42.")});
  WsClient c(f.port);
  c.next();
  c.send(
      {{"type", "session.update"},
       {"session",
        {{"tools",
          {{{"type", "function"}, {"name", "lookup"}, {"parameters", {{"type", "object"}}}}}}}}});
  c.next();
  c.send({{"type", "conversation.item.create"},
          {"item", {{"type", "message"}, {"content", "look it up"}}}});
  c.send({{"type", "response.create"}});
  const auto call_event = c.until("response.function_call_arguments.done");
  EXPECT_EQ(call_event["name"], "lookup");
  EXPECT_EQ(call_event["call_id"], "c7");
  c.send({{"type", "conversation.item.create"},
          {"item", {{"type", "function_call_output"}, {"call_id", "c7"}, {"output", "42"}}}});
  EXPECT_EQ(c.until("response.done")["response"]["output_text"], "The client said 42.");
}

TEST(ServerWebSocket, ErrorsKeepTheSessionAlive) {
  Fixture f({say("fine")});
  WsClient c(f.port);
  c.next();
  c.ws.write(asio::buffer(std::string("{not json")));
  auto e = c.next();
  EXPECT_EQ(e["type"], "error");
  EXPECT_EQ(e["error"]["code"], "invalid_json");
  c.send({{"type", "teleport"}, {"event_id", "ev9"}});
  e = c.next();
  EXPECT_EQ(e["error"]["code"], "unknown_event");
  c.send({{"type", "response.create"}, {"event_id", "ev10"}});
  e = c.next();
  EXPECT_EQ(e["error"]["code"], "no_input");
  EXPECT_EQ(e["error"]["event_id"], "ev10");
  c.send(
      {{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"content", "hi"}}}});
  c.send({{"type", "response.create"}});
  EXPECT_EQ(c.until("response.done")["response"]["output_text"], "fine");
}

TEST(ServerWebSocket, OversizedFramesCloseWith1009AndBadAuthIsRefused) {
  Fixture f({});
  {
    WsClient c(f.port);
    c.next();
    beast::error_code ec;
    c.ws.write(asio::buffer(std::string(200 * 1024, 'x')), ec);
    beast::flat_buffer b;
    c.ws.read(b, ec);
    EXPECT_EQ(ec, websocket::error::closed);
    EXPECT_EQ(c.ws.reason().code, websocket::close_code::too_big);
  }
  EXPECT_THROW(WsClient(f.port, "/v1/sessions", "wrong"), beast::system_error);
}

TEST(ServerWebSocket, ResumeByIdAfterADroppedConnection) {
  Fixture f({say("first"), say("second")});
  std::string id;
  {
    WsClient c(f.port);
    id = c.next()["session"]["id"];
    c.send({{"type", "conversation.item.create"},
            {"item", {{"type", "message"}, {"content", "one"}}}});
    c.send({{"type", "response.create"}});
    c.until("response.done");
  }
  // Whether or not the server has seen the dropped socket yet, the resume gets the session.
  auto again = std::make_unique<WsClient>(f.port, "/v1/sessions?session_id=" + id);
  const nlohmann::json created = again->next();
  EXPECT_EQ(created["session"]["id"], id);
  EXPECT_TRUE(created["session"]["resumed"].get<bool>());
  again->send(
      {{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"content", "two"}}}});
  again->send({{"type", "response.create"}});
  EXPECT_EQ(again->until("response.done")["response"]["output_text"], "second");
}

// A client whose old connection the server still holds (a dead link without FIN) resumes at
// once: the new connection takes the session over and the old one is closed.
TEST(ServerWebSocket, ResumeTakesTheSessionOverFromAStillOpenConnection) {
  Fixture f({say("first"), say("second")});
  WsClient old_client(f.port);
  const std::string id = old_client.next()["session"]["id"];
  WsClient c(f.port, "/v1/sessions?session_id=" + id);
  const nlohmann::json created = c.next();
  EXPECT_EQ(created["session"]["id"], id);
  EXPECT_TRUE(created["session"]["taken_over"].get<bool>());
  beast::error_code ec;
  beast::flat_buffer b;
  for (int i = 0; i < 10 && !ec; ++i) old_client.ws.read(b, ec);  // then the close
  EXPECT_EQ(ec, websocket::error::closed);
  EXPECT_EQ(old_client.ws.reason().code, websocket::close_code::going_away);
  c.send({{"type", "conversation.item.create"}, {"item", {{"type", "message"}, {"content", "x"}}}});
  c.send({{"type", "response.create"}});
  EXPECT_EQ(c.until("response.done")["response"]["output_text"], "first");
}

}  // namespace
}  // namespace agentrt::server
