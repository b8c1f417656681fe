// The remote backend against a fake OpenAI-compatible server on 127.0.0.1.
#include "runtime/remote_backend.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deque>
#include <mutex>
#include <thread>

namespace agentrt {
namespace {

struct CannedResponse {
  int status;
  std::string body;
  int delay_ms = 0;
  std::string content_type = "text/event-stream";
};

class FakeOpenAiServer {
 public:
  explicit FakeOpenAiServer(std::deque<CannedResponse> responses)
      : responses_(std::move(responses)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(fd_, 8);
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeOpenAiServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }
  std::vector<std::string> bodies() {
    std::lock_guard lock(mutex_);
    return bodies_;
  }

 private:
  void serve() {
    while (!stop_) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      std::string request;
      char buf[8192];
      size_t need = std::string::npos;
      while (true) {
        const ssize_t n = ::read(c, buf, sizeof buf);
        if (n <= 0) break;
        request.append(buf, n);
        const size_t headers_end = request.find("\r\n\r\n");
        if (headers_end != std::string::npos && need == std::string::npos) {
          const size_t cl = request.find("Content-Length: ");
          need =
              headers_end + 4 + (cl != std::string::npos ? std::stoul(request.substr(cl + 16)) : 0);
        }
        if (need != std::string::npos && request.size() >= need) break;
      }
      CannedResponse r{500, "no more canned responses"};
      {
        std::lock_guard lock(mutex_);
        bodies_.push_back(request.substr(request.find("\r\n\r\n") + 4));
        if (!responses_.empty()) {
          r = responses_.front();
          responses_.pop_front();
        }
      }
      if (r.delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(r.delay_ms));
      const std::string out = "HTTP/1.1 " + std::to_string(r.status) +
                              " X\r\nContent-Type: " + r.content_type +
                              "\r\nContent-Length: " + std::to_string(r.body.size()) +
                              "\r\nConnection: close\r\n\r\n" + r.body;
      (void)!::write(c, out.data(), out.size());
      ::close(c);
    }
  }
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mutex_;
  std::deque<CannedResponse> responses_;
  std::vector<std::string> bodies_;
};

std::string sse(std::initializer_list<const char*> chunks) {
  std::string out;
  for (const char* c : chunks) out += std::string("data: ") + c + "\n\n";
  return out + "data: [DONE]\n\n";
}

GenerationRequest weather_request() {
  GenerationRequest r;
  chat::Message user;
  user.content = "Weather in Paris?";
  r.messages = {user};
  r.tools = nlohmann::ordered_json::parse(
      R"([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}])");
  return r;
}

RemoteBackendOptions fast_options(const std::string& url) {
  RemoteBackendOptions o;
  o.base_url = url;
  o.model = "deepseek-v4";
  o.backoff = std::chrono::milliseconds(10);
  o.total_timeout = std::chrono::milliseconds(2000);
  return o;
}

TEST(RemoteBackend, StreamsContentAndToolCallsAfterARetry) {
  FakeOpenAiServer server({
      {429, R"({"error":"slow down"})", 0, "application/json"},
      {200,
       sse({R"({"choices":[{"delta":{"content":"Checking"}}]})",
            R"({"choices":[{"delta":{"content":" now."}}]})",
            R"({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"get_weather","arguments":"{\"ci"}}]}}]})",
            R"({"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Paris\"}"}}]},"finish_reason":"tool_calls"}]})",
            R"({"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":9}})"})},
  });
  RemoteBackend backend(fast_options(server.url()));
  std::string text, args;
  const auto r = backend.generate(
      weather_request(),
      [&](const chat::ParseEvent& e) {
        if (e.kind == chat::ParseEvent::Kind::content_delta) text += e.text;
        if (e.kind == chat::ParseEvent::Kind::tool_call_arguments_delta) args += e.text;
      },
      nullptr);
  EXPECT_EQ(r.finish, FinishReason::tool_calls) << r.error;
  EXPECT_EQ(text, "Checking now.");
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_EQ(r.message.tool_calls[0].id, "c1");
  EXPECT_EQ(nlohmann::json::parse(r.message.tool_calls[0].arguments_json)["city"], "Paris");
  EXPECT_EQ(args, r.message.tool_calls[0].arguments_json);
  EXPECT_EQ(r.usage.prompt_tokens, 12);
  EXPECT_TRUE(r.error.empty()) << r.error;
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 2u);
  const auto sent = nlohmann::json::parse(bodies[1]);
  EXPECT_EQ(sent["model"], "deepseek-v4");
  EXPECT_TRUE(sent["stream"].get<bool>());
  EXPECT_EQ(sent["tools"][0]["function"]["name"], "get_weather");
}

TEST(RemoteBackend, InvalidArgumentsAreReported) {
  FakeOpenAiServer server(
      {{200,
        sse({R"({"choices":[{"delta":{"tool_calls":[{"index":0,"id":"x","function":{"name":"get_weather","arguments":"{\"town\": 3}"}}]}}]})"})}});
  RemoteBackend backend(fast_options(server.url()));
  const auto r = backend.generate(weather_request(), {}, nullptr);
  ASSERT_EQ(r.message.tool_calls.size(), 1u);
  EXPECT_NE(r.error.find("arguments/city: required property missing"), std::string::npos)
      << r.error;
}

TEST(RemoteBackend, ServerErrorsExhaustRetriesAndTimeoutsAreErrors) {
  FakeOpenAiServer server({{500, "boom", 0, "text/plain"},
                           {502, "bad gateway", 0, "text/plain"},
                           {503, "busy", 0, "text/plain"},
                           {500, "again", 0, "text/plain"}});
  auto options = fast_options(server.url());
  options.max_attempts = 3;
  RemoteBackend backend(options);
  const auto r = backend.generate(weather_request(), {}, nullptr);
  EXPECT_EQ(r.finish, FinishReason::error);
  EXPECT_NE(r.error.find("HTTP 503"), std::string::npos) << r.error;
  EXPECT_EQ(server.bodies().size(), 3u);

  FakeOpenAiServer slow({{200, sse({R"({"choices":[{"delta":{"content":"late"}}]})"}), 1500}});
  auto slow_options = fast_options(slow.url());
  slow_options.total_timeout = std::chrono::milliseconds(300);
  slow_options.max_attempts = 1;
  const auto t = RemoteBackend(slow_options).generate(weather_request(), {}, nullptr);
  EXPECT_EQ(t.finish, FinishReason::error);
  EXPECT_NE(t.error.find("imeout"), std::string::npos) << t.error;
}

TEST(RemoteBackend, MalformedSseAndDsmlInContent) {
  FakeOpenAiServer bad({{200, "data: {not json\n\n"}});
  EXPECT_EQ(RemoteBackend(fast_options(bad.url())).generate(weather_request(), {}, nullptr).finish,
            FinishReason::error);
  // A server without a tool parser returns the model's DSML as content: parsed here.
  const std::string dsml =
      R"(\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>)";
  const std::string chunk = R"({"choices":[{"delta":{"content":")" + dsml + R"("}}]})";
  FakeOpenAiServer raw({{200, sse({chunk.c_str()})}});
  const auto r = RemoteBackend(fast_options(raw.url())).generate(weather_request(), {}, nullptr);
  ASSERT_EQ(r.message.tool_calls.size(), 1u) << r.error;
  EXPECT_EQ(nlohmann::json::parse(r.message.tool_calls[0].arguments_json)["city"], "Oslo");
}

TEST(RemoteBackend, GuidedDecodingSendsTheGrammar) {
  RemoteBackendOptions o = fast_options("http://127.0.0.1:1/v1");
  o.guided_decoding = "vllm";
  auto request = weather_request();
  request.tool_choice.mode = ToolChoice::Mode::required;
  const auto body = RemoteBackend(o).request_body(request);
  ASSERT_TRUE(body.contains("structured_outputs"));
  EXPECT_NE(body["structured_outputs"]["grammar"].get<std::string>().find("get_weather"),
            std::string::npos);
  o.guided_decoding = "sglang";
  EXPECT_TRUE(RemoteBackend(o).request_body(request).contains("ebnf"));
}

}  // namespace
}  // namespace agentrt
