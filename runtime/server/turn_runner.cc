#include "runtime/server/turn_runner.h"

#include <filesystem>
#include <random>

namespace agentrt::server {

namespace {

std::string new_id(const char* prefix) {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = prefix;
  for (int i = 0; i < 16; ++i) id += kHex[rd() % 16];
  return id;
}

// Sends an event, pausing while the client's queue is full; cancels the turn when the client is
// gone or too slow (the generation stops at its next token and frees its cache).
class EventSender {
 public:
  EventSender(Outbox& outbox, SessionState& state, ServerMetrics& metrics)
      : outbox_(outbox), state_(state), metrics_(metrics) {}
  void operator()(const nlohmann::json& event) {
    if (gone_) return;
    if (!outbox_.push_blocking(
            event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))) {
      gone_ = true;
      if (outbox_.stalled()) ++metrics_.slow_client_closes;
      std::lock_guard lock(state_.mutex);
      state_.cancel_turn_locked("client gone");
    }
  }

 private:
  Outbox& outbox_;
  SessionState& state_;
  ServerMetrics& metrics_;
  bool gone_ = false;
};

std::shared_ptr<tools::ToolRegistry> session_tools(const std::shared_ptr<SessionState>& s,
                                                   EventSender& send, const ServerContext& ctx) {
  auto registry = std::make_shared<tools::ToolRegistry>();
  for (const auto& spec : ctx.builtins->specs()) {
    if (std::find(s->builtin_names.begin(), s->builtin_names.end(), spec.name) ==
        s->builtin_names.end())
      continue;
    auto builtins = ctx.builtins;
    registry->add(spec, [builtins, name = spec.name](const nlohmann::json& args,
                                                     const tools::ToolContext& c) {
      return builtins->call(name, args, c);
    });
  }
  std::weak_ptr<SessionState> weak = s;
  for (const auto& t : s->client_tools) {
    tools::ToolSpec spec = tools::ToolSpec::from_openai(nlohmann::ordered_json::parse(t.dump()));
    const auto timeout = ctx.options.client_tool_timeout;
    registry->add(spec, [weak, &send, timeout, name = spec.name](const nlohmann::json& args,
                                                                 const tools::ToolContext&) {
      auto state = weak.lock();
      if (!state) return tools::ToolResult::error("execution", "session closed");
      auto promise = std::make_shared<std::promise<std::string>>();
      std::string call_id;
      {
        std::lock_guard lock(state->mutex);
        auto it = state->call_ids.find(name + "\n" + args.dump());
        call_id = it != state->call_ids.end() ? it->second : new_id("call_");
        if (it != state->call_ids.end()) state->call_ids.erase(it);
        state->waiting[call_id] = promise;
      }
      send({{"type", "response.function_call_arguments.done"},
            {"call_id", call_id},
            {"name", name},
            {"arguments", args.dump()},
            {"client_side", true}});
      auto future = promise->get_future();
      if (future.wait_for(timeout) != std::future_status::ready) {
        std::lock_guard lock(state->mutex);
        state->waiting.erase(call_id);
        return tools::ToolResult::error("timeout",
                                        "the client did not answer call " + call_id + " in time");
      }
      tools::ToolResult r;
      r.content = future.get();
      return r;
    });
  }
  return registry;
}

}  // namespace

void run_turn(const std::shared_ptr<SessionState>& s, Outbox& outbox, ServerContext& ctx,
              const std::string& event_id) {
  // However the turn ends (even by an exception), the session can start another.
  struct TurnEnd {
    SessionState& s;
    ~TurnEnd() {
      std::lock_guard lock(s.mutex);
      s.running.reset();
      s.turn_active = false;
    }
  } turn_end{*s};
  EventSender send(outbox, *s, ctx.metrics);
  std::string user;
  std::shared_ptr<tools::ToolRegistry> registry;
  AgentOptions options;
  {
    std::lock_guard lock(s->mutex);
    for (const auto& u : s->pending_user) user += (user.empty() ? "" : "\n\n") + u;
    s->pending_user.clear();
    registry = session_tools(s, send, ctx);
    options = s->options;
  }
  Agent agent(ctx.backend, registry, options);
  std::shared_ptr<Session> session =
      std::filesystem::exists(s->transcript)
          ? std::shared_ptr<Session>(agent.resume_session(s->transcript))
          : std::shared_ptr<Session>(agent.new_session(s->transcript));
  {
    std::lock_guard lock(s->mutex);
    s->running = session;
  }
  const std::string response_id = new_id("resp_");
  send({{"type", "response.created"},
        {"response", {{"id", response_id}, {"status", "in_progress"}}},
        {"event_id", event_id}});
  const auto start = std::chrono::steady_clock::now();
  const TurnResult result = session->send(user, [&](const AgentEvent& e) {
    switch (e.kind) {
      case AgentEvent::Kind::text_delta:
        send({{"type", "response.output_text.delta"},
              {"response_id", response_id},
              {"delta", e.text}});
        break;
      case AgentEvent::Kind::reasoning_delta:
        send({{"type", "response.reasoning.delta"},
              {"response_id", response_id},
              {"delta", e.text}});
        break;
      case AgentEvent::Kind::tool_call_arguments_delta:
        send({{"type", "response.function_call_arguments.delta"},
              {"response_id", response_id},
              {"call_id", e.call_id},
              {"name", e.name},
              {"delta", e.text}});
        break;
      case AgentEvent::Kind::tool_call_end: {
        std::lock_guard lock(s->mutex);
        s->call_ids.emplace(e.name + "\n" + e.data.dump(), e.call_id);
        ++ctx.metrics.tool_calls;
        break;
      }
      case AgentEvent::Kind::tool_result:
        if (ctx.builtins->contains(e.name)) {
          send({{"type", "response.tool_result"},
                {"response_id", response_id},
                {"call_id", e.call_id},
                {"name", e.name},
                {"output", e.text},
                {"ok", e.data.value("ok", false)}});
        }
        break;
      case AgentEvent::Kind::step:
        ctx.metrics.prompt_tokens += e.data.value("prompt_tokens", int64_t{0});
        ctx.metrics.completion_tokens += e.data.value("completion_tokens", int64_t{0});
        break;
      default:
        break;
    }
  });
  ctx.metrics.latency_ms_total += std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - start)
                                      .count();
  ++ctx.metrics.latency_count;
  {
    std::lock_guard lock(s->mutex);
    s->running.reset();
    s->turn_active = false;
  }
  // The agent session goes before response.done is sent: its cache is freed by then.
  session.reset();
  send({{"type", "response.done"},
        {"response",
         {{"id", response_id},
          {"status", result.stop == StopReason::cancelled ? "cancelled" : "completed"},
          {"stop_reason", std::string(to_string(result.stop))},
          {"output_text", result.final_text},
          {"error", result.error},
          {"usage",
           {{"input_tokens", result.usage.prompt_tokens},
            {"output_tokens", result.usage.completion_tokens}}}}}});
}

}  // namespace agentrt::server
