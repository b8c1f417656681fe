// The loop end to end with a scripted backend: exact sequences of model turns.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include "runtime/agent.h"
#include "runtime/transcript.h"

namespace agentrt {
namespace {

// Plays back canned assistant messages, one per generate() call, and records the requests.
class ScriptedBackend : public Backend {
 public:
  explicit ScriptedBackend(std::vector<chat::Message> script) : script_(std::move(script)) {}
  std::string name() const override { return "scripted"; }
  GenerationResult generate(const GenerationRequest& request, const GenerationCallback& on_event,
                            const std::atomic<bool>* cancel, std::string_view) override {
    std::lock_guard lock(mutex_);
    requests.push_back(request);
    GenerationResult r;
    if (cancel && cancel->load()) {
      r.finish = FinishReason::cancelled;
      return r;
    }
    if (next_ >= script_.size()) throw std::runtime_error("script exhausted");
    r.message = script_[next_++];
    if (on_event && !r.message.content.empty())
      on_event({chat::ParseEvent::Kind::content_delta, -1, r.message.content, "", ""});
    r.finish = r.message.tool_calls.empty() ? FinishReason::stop : FinishReason::tool_calls;
    r.usage.prompt_tokens = 10;
    r.usage.completion_tokens = 5;
    return r;
  }
  std::vector<GenerationRequest> requests;

 private:
  std::vector<chat::Message> script_;
  size_t next_ = 0;
  std::mutex mutex_;
};

chat::Message call(std::vector<std::pair<std::string, std::string>> calls,
                   std::string content = "") {
  chat::Message m;
  m.role = chat::Message::Role::assistant;
  m.content = std::move(content);
  int i = 0;
  for (auto& [name, args] : calls)
    m.tool_calls.push_back({"call_" + std::to_string(i++), name, args});
  return m;
}
chat::Message answer(std::string text) {
  chat::Message m;
  m.role = chat::Message::Role::assistant;
  m.content = std::move(text);
  return m;
}

std::shared_ptr<tools::ToolRegistry> test_tools(std::atomic<int>* counter = nullptr) {
  auto reg = std::make_shared<tools::ToolRegistry>();
  reg->add(
      {"add", "add two integers",
       nlohmann::ordered_json::parse(
           R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]})")},
      [counter](const nlohmann::json& a, const tools::ToolContext&) {
        if (counter) ++*counter;
        tools::ToolResult r;
        r.content = std::to_string(a["a"].get<int>() + a["b"].get<int>());
        return r;
      });
  reg->add({"fail", "always fails",
            nlohmann::ordered_json::parse(R"({"type":"object","properties":{}})")},
           [](const nlohmann::json&, const tools::ToolContext&) {
             return tools::ToolResult::error("execution", "boom");
           });
  return reg;
}

TEST(AgentLoop, MultiStepChainFeedsResultsBack) {
  auto backend = std::make_shared<ScriptedBackend>(std::vector<chat::Message>{
      call({{"add", R"({"a": 2, "b": 3})"}}), call({{"add", R"({"a": 5, "b": 10})"}}),
      answer("The total is 15.")});
  Agent agent(backend, test_tools(), {.system_prompt = "Be exact."});
  auto session = agent.new_session();
  std::vector<std::string> kinds;
  const auto r = session->send("add 2 and 3, then add 10", [&](const AgentEvent& e) {
    kinds.push_back(std::string(to_string(e.kind)));
  });
  EXPECT_EQ(r.stop, StopReason::final_answer);
  EXPECT_EQ(r.final_text, "The total is 15.");
  EXPECT_EQ(r.steps, 3);
  EXPECT_EQ(r.tool_calls, 2);
  EXPECT_EQ(r.usage.prompt_tokens, 30);
  ASSERT_EQ(backend->requests.size(), 3u);
  // The second request sees the first call's result; the system prompt leads every request.
  const auto& second = backend->requests[1].messages;
  EXPECT_EQ(second.front().role, chat::Message::Role::system);
  EXPECT_EQ(second.back().role, chat::Message::Role::tool);
  EXPECT_EQ(second.back().content, "5");
  EXPECT_EQ(second.back().tool_call_id, "call_0");
  EXPECT_EQ(kinds.back(), "final");
  EXPECT_EQ(session->messages().size(), 6u);  // user, call, result, call, result, answer
}

TEST(AgentLoop, ParallelCallsRunAndResultsKeepCallOrder) {
  std::atomic<int> counter{0};
  auto backend = std::make_shared<ScriptedBackend>(
      std::vector<chat::Message>{call({{"add", R"({"a": 1, "b": 1})"},
                                       {"add", R"({"a": 2, "b": 2})"},
                                       {"add", R"({"a": 3, "b": 3})"}}),
                                 answer("done")});
  Agent agent(backend, test_tools(&counter), {});
  auto session = agent.new_session();
  const auto r = session->send("three sums");
  EXPECT_EQ(counter.load(), 3);
  const auto& m = session->messages();
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m[2].content, "2");
  EXPECT_EQ(m[3].content, "4");
  EXPECT_EQ(m[4].content, "6");
  EXPECT_EQ(m[4].tool_call_id, "call_2");
}

TEST(AgentLoop, ErrorsAndValidationFailuresGoBackToTheModel) {
  auto backend = std::make_shared<ScriptedBackend>(
      std::vector<chat::Message>{call({{"add", R"({"a": "two", "b": 3})"}}), call({{"nope", "{}"}}),
                                 call({{"add", "{not json"}}), answer("gave up politely")});
  Agent agent(backend, test_tools(), {});
  auto session = agent.new_session();
  const auto r = session->send("try");
  EXPECT_EQ(r.stop, StopReason::final_answer);
  const auto& m = session->messages();
  EXPECT_NE(m[2].content.find("error (validation)"), std::string::npos) << m[2].content;
  EXPECT_NE(m[2].content.find("arguments/a"), std::string::npos);
  EXPECT_NE(m[4].content.find("not_found"), std::string::npos);
  EXPECT_NE(m[6].content.find("not valid JSON"), std::string::npos);
}

TEST(AgentLoop, RepeatedIdenticalFailuresStop) {
  auto backend = std::make_shared<ScriptedBackend>(std::vector<chat::Message>{
      call({{"fail", "{}"}}), call({{"fail", "{}"}}), call({{"fail", "{}"}}),
      call({{"fail", "{}"}}), answer("never reached")});
  Agent agent(backend, test_tools(), {.limits = {.max_identical_failures = 2}});
  const auto r = agent.new_session()->send("x");
  EXPECT_EQ(r.stop, StopReason::repeated_failure);
  EXPECT_EQ(backend->requests.size(), 3u);
}

TEST(AgentLoop, BudgetsStopTheLoop) {
  std::vector<chat::Message> endless(10, call({{"add", R"({"a": 1, "b": 1})"}}));
  auto backend = std::make_shared<ScriptedBackend>(endless);
  Agent agent(backend, test_tools(), {.limits = {.max_steps = 3}});
  EXPECT_EQ(agent.new_session()->send("loop").stop, StopReason::max_steps);
  auto backend2 = std::make_shared<ScriptedBackend>(endless);
  Agent agent2(backend2, test_tools(), {.limits = {.max_steps = 10, .max_total_tokens = 40}});
  const auto r = agent2.new_session()->send("loop");
  EXPECT_EQ(r.stop, StopReason::token_budget);
  EXPECT_EQ(backend2->requests.size(), 3u);  // 15 tokens per step
}

TEST(AgentLoop, CancellationStopsBeforeTheNextStep) {
  auto backend = std::make_shared<ScriptedBackend>(
      std::vector<chat::Message>{call({{"add", R"({"a": 1, "b": 1})"}}), answer("x")});
  auto reg = test_tools();
  Agent agent(backend, reg, {});
  auto session = agent.new_session();
  Session* raw = session.get();
  session->add_tool({"cancel_me", "", nlohmann::ordered_json::parse(R"({"type":"object"})")},
                    [raw](const nlohmann::json&, const tools::ToolContext&) {
                      raw->cancel();
                      return tools::ToolResult{};
                    });
  auto backend_calls = std::make_shared<ScriptedBackend>(
      std::vector<chat::Message>{call({{"cancel_me", "{}"}}), answer("x")});
  Agent agent2(backend_calls, reg, {});
  auto s2 = agent2.new_session();
  Session* raw2 = s2.get();
  s2->add_tool({"cancel_me", "", nlohmann::ordered_json::parse(R"({"type":"object"})")},
               [raw2](const nlohmann::json&, const tools::ToolContext&) {
                 raw2->cancel();
                 return tools::ToolResult{};
               });
  EXPECT_EQ(s2->send("go").stop, StopReason::cancelled);
  EXPECT_EQ(backend_calls->requests.size(), 1u);
  // Session-local tools do not leak into the agent's shared registry.
  EXPECT_FALSE(reg->contains("cancel_me"));
}

TEST(AgentLoop, TranscriptResumesIncludingACrashMidStep) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("agentrt-transcript-" + std::to_string(::getpid()) + ".jsonl");
  std::filesystem::remove(path);
  {
    auto backend = std::make_shared<ScriptedBackend>(
        std::vector<chat::Message>{call({{"add", R"({"a": 1, "b": 2})"}}), answer("3")});
    Agent agent(backend, test_tools(), {});
    EXPECT_EQ(agent.new_session(path)->send("1+2?").final_text, "3");
  }
  {
    // Simulate a crash mid-step: an assistant call recorded, its result never written, and a torn
    // line.
    std::ofstream out(path, std::ios::app);
    out << R"({"type":"message","message":{"role":"user","content":"and 4+4?"}})"
        << "\n";
    out << R"({"type":"message","message":{"role":"assistant","content":"","tool_calls":[{"id":"c9","type":"function","function":{"name":"add","arguments":"{\"a\":4,\"b\":4}"}}]}})"
        << "\n";
    out << R"({"type":"mess)";
  }
  auto backend = std::make_shared<ScriptedBackend>(std::vector<chat::Message>{answer("8")});
  Agent agent(backend, test_tools(), {});
  auto resumed = agent.resume_session(path);
  const auto& m = resumed->messages();
  ASSERT_EQ(m.size(), 7u);  // 4 from turn one, user, call, interrupted result
  EXPECT_EQ(m.back().role, chat::Message::Role::tool);
  EXPECT_NE(m.back().content.find("session stopped"), std::string::npos);
  EXPECT_EQ(resumed->send("continue").final_text, "8");
  EXPECT_EQ(backend->requests[0].messages.size(), 8u);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace agentrt

namespace agentrt {
namespace {

TEST(AgentLoop, TimedOutCallsAreRetriedByPolicy) {
  auto backend = std::make_shared<ScriptedBackend>(
      std::vector<chat::Message>{call({{"flaky", "{}"}}), answer("ok")});
  auto reg = std::make_shared<tools::ToolRegistry>();
  std::atomic<int> attempts{0};
  reg->add({"flaky", "times out once", nlohmann::ordered_json::parse(R"({"type":"object"})")},
           [&attempts](const nlohmann::json&, const tools::ToolContext&) {
             if (attempts++ == 0) return tools::ToolResult::error("timeout", "too slow");
             tools::ToolResult r;
             r.content = "done";
             return r;
           });
  Agent agent(backend, reg, {.limits = {.max_call_retries = 1}});
  auto session = agent.new_session();
  EXPECT_EQ(session->send("go").final_text, "ok");
  EXPECT_EQ(attempts.load(), 2);
  EXPECT_EQ(session->messages()[2].content, "done");
}

}  // namespace
}  // namespace agentrt
