#include "runtime/server/realtime_session.h"

#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/websocket.hpp>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <random>
#include <thread>

namespace agentrt::server {

namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = boost::asio::ip::tcp;

struct SessionState {
  std::string id;
  std::filesystem::path transcript;
  std::mutex mutex;
  AgentOptions options;
  std::vector<std::string> builtin_names;
  nlohmann::json client_tools = nlohmann::json::array();  // OpenAI-style function specs
  std::vector<std::string> pending_user;
  std::shared_ptr<Session> running;  // the turn in progress
  std::thread turn;
  // Client-side tool calls waiting for function_call_output, by call id.
  std::map<std::string, std::shared_ptr<std::promise<std::string>>> waiting;
  std::multimap<std::string, std::string>
      call_ids;  // name + "\n" + args -> call id (from the stream)
};

std::shared_ptr<SessionState> SessionDirectory::find(const std::string& id) {
  std::lock_guard lock(mutex_);
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second;
}
void SessionDirectory::add(const std::shared_ptr<SessionState>& s) {
  std::lock_guard lock(mutex_);
  sessions_[s->id] = s;
}
size_t SessionDirectory::size() {
  std::lock_guard lock(mutex_);
  return sessions_.size();
}
void SessionDirectory::cancel_all() {
  std::lock_guard lock(mutex_);
  for (auto& [id, s] : sessions_) {
    std::lock_guard l(s->mutex);
    if (s->running) s->running->cancel();
    for (auto& [cid, p] : s->waiting) p->set_value("error: server shutting down");
    s->waiting.clear();
  }
}

nlohmann::json parse_client_event(const std::string& text) {
  const auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) throw std::invalid_argument("invalid_json: the message is not JSON");
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw std::invalid_argument("invalid_event: an event needs a string 'type'");
  static const char* kKnown[] = {"session.update", "conversation.item.create", "response.create",
                                 "response.cancel"};
  const std::string type = j["type"];
  for (const char* k : kKnown) {
    if (type == k) return j;
  }
  throw std::invalid_argument("unknown_event: unknown event type '" + type + "'");
}

namespace {

std::string new_id(const char* prefix) {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = prefix;
  for (int i = 0; i < 16; ++i) id += kHex[rd() % 16];
  return id;
}

class Writer {
 public:
  explicit Writer(websocket::stream<tcp::socket>& ws) : ws_(ws) {}
  bool send(const nlohmann::json& event) {
    std::lock_guard lock(mutex_);
    if (closed_) return false;
    beast::error_code ec;
    ws_.text(true);
    ws_.write(
        boost::asio::buffer(event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)),
        ec);
    if (ec) closed_ = true;
    return !ec;
  }
  void mark_closed() {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }

 private:
  websocket::stream<tcp::socket>& ws_;
  std::mutex mutex_;
  bool closed_ = false;
};

void apply_session_update(SessionState& s, const nlohmann::json& session,
                          const RealtimeContext& ctx) {
  if (session.contains("instructions"))
    s.options.system_prompt = session["instructions"].get<std::string>();
  if (session.contains("tool_choice"))
    s.options.tool_choice = ToolChoice::from_json(session["tool_choice"]);
  if (session.contains("max_steps")) s.options.limits.max_steps = session["max_steps"].get<int>();
  if (session.contains("max_tokens"))
    s.options.max_tokens_per_step = session["max_tokens"].get<int>();
  if (session.contains("tools")) {
    s.builtin_names.clear();
    s.client_tools = nlohmann::json::array();
    for (const auto& t : session["tools"]) {
      const std::string type = t.value("type", "function");
      if (type == "builtin") {
        const std::string name = t.at("name").get<std::string>();
        if (!ctx.builtins->contains(name))
          throw std::invalid_argument("invalid_tool: no server-side tool named '" + name + "'");
        s.builtin_names.push_back(name);
      } else if (type == "function") {
        if (!t.contains("name"))
          throw std::invalid_argument("invalid_tool: a client tool needs a name");
        s.client_tools.push_back(t);
      } else {
        throw std::invalid_argument("invalid_tool: tool type must be 'builtin' or 'function'");
      }
    }
  }
}

// Runs one response (the agent loop over the pending user input) on its own thread.
void start_turn(const std::shared_ptr<SessionState>& s, Writer& writer, const RealtimeContext& ctx,
                const std::string& event_id) {
  std::string user;
  {
    std::lock_guard lock(s->mutex);
    for (const auto& u : s->pending_user) user += (user.empty() ? "" : "\n\n") + u;
    s->pending_user.clear();
  }
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
    registry->add(spec, [weak, &writer, timeout, name = spec.name](const nlohmann::json& args,
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
      writer.send({{"type", "response.function_call_arguments.done"},
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
  Agent agent(ctx.backend, registry, s->options);
  std::shared_ptr<Session> session =
      std::filesystem::exists(s->transcript)
          ? std::shared_ptr<Session>(agent.resume_session(s->transcript))
          : std::shared_ptr<Session>(agent.new_session(s->transcript));
  {
    std::lock_guard lock(s->mutex);
    s->running = session;
  }
  const std::string response_id = new_id("resp_");
  writer.send({{"type", "response.created"},
               {"response", {{"id", response_id}, {"status", "in_progress"}}},
               {"event_id", event_id}});
  const TurnResult result = session->send(user, [&, s](const AgentEvent& e) {
    switch (e.kind) {
      case AgentEvent::Kind::text_delta:
        writer.send({{"type", "response.output_text.delta"},
                     {"response_id", response_id},
                     {"delta", e.text}});
        break;
      case AgentEvent::Kind::reasoning_delta:
        writer.send({{"type", "response.reasoning.delta"},
                     {"response_id", response_id},
                     {"delta", e.text}});
        break;
      case AgentEvent::Kind::tool_call_arguments_delta:
        writer.send({{"type", "response.function_call_arguments.delta"},
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
          writer.send({{"type", "response.tool_result"},
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
  {
    std::lock_guard lock(s->mutex);
    s->running.reset();
  }
  writer.send({{"type", "response.done"},
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

}  // namespace

void run_realtime_session(tcp::socket socket,
                          const beast::http::request<beast::http::string_body>& req,
                          beast::flat_buffer& buffer, RealtimeContext ctx) {
  // Clients speak only after the handshake answer, so the HTTP read left no frame bytes behind.
  (void)buffer;
  websocket::stream<tcp::socket> ws(std::move(socket));
  ws.read_message_max(ctx.options.max_message_bytes);
  beast::error_code ec;
  ws.accept(req, ec);
  if (ec) return;
  Writer writer(ws);
  // Resume by id, or a new session.
  std::shared_ptr<SessionState> state;
  const std::string target(req.target());
  if (const auto q = target.find("session_id="); q != std::string::npos) {
    state = ctx.sessions.find(target.substr(q + 11));
    if (!state) {
      writer.send({{"type", "error"},
                   {"error",
                    {{"code", "session_not_found"},
                     {"message", "no session " + target.substr(q + 11) + " (expired?)"}}}});
      ws.close(websocket::close_code::policy_error, ec);
      return;
    }
  } else {
    if (ctx.sessions.size() >= ctx.options.max_sessions) {
      writer.send({{"type", "error"},
                   {"error",
                    {{"code", "too_many_sessions"},
                     {"message", "the server's session limit is reached"}}}});
      ws.close(websocket::close_code::try_again_later, ec);
      return;
    }
    state = std::make_shared<SessionState>();
    state->id = new_id("sess_");
    state->options = ctx.defaults;
    state->transcript =
        std::filesystem::temp_directory_path() / ("agentrt-sessions") / (state->id + ".jsonl");
    ctx.sessions.add(state);
    ++ctx.metrics.sessions_total;
  }
  ++ctx.metrics.sessions_open;
  writer.send(
      {{"type", "session.created"},
       {"session",
        {{"id", state->id}, {"resumed", target.find("session_id=") != std::string::npos}}}});
  for (;;) {
    beast::flat_buffer message;
    ws.read(message, ec);
    if (ec) break;  // closed, dropped, or too big (Beast closes with 1009)
    const std::string text = beast::buffers_to_string(message.data());
    nlohmann::json event;
    std::string event_id;
    try {
      event = parse_client_event(text);
      event_id = event.value("event_id", "");
      const std::string type = event["type"];
      if (type == "session.update") {
        std::lock_guard lock(state->mutex);
        apply_session_update(*state, event.value("session", nlohmann::json::object()), ctx);
        writer.send({{"type", "session.updated"}, {"event_id", event_id}});
      } else if (type == "conversation.item.create") {
        const auto& item = event.at("item");
        const std::string item_type = item.value("type", "message");
        if (item_type == "function_call_output") {
          std::lock_guard lock(state->mutex);
          const std::string call_id = item.at("call_id").get<std::string>();
          auto it = state->waiting.find(call_id);
          if (it == state->waiting.end())
            throw std::invalid_argument("unknown_call: no pending client-side call " + call_id);
          it->second->set_value(item.value("output", ""));
          state->waiting.erase(it);
        } else {
          std::string content;
          if (item.contains("content") && item["content"].is_string())
            content = item["content"];
          else
            for (const auto& part : item.value("content", nlohmann::json::array()))
              content += part.value("text", "");
          std::lock_guard lock(state->mutex);
          state->pending_user.push_back(content);
        }
      } else if (type == "response.create") {
        std::lock_guard lock(state->mutex);
        if (state->running || state->turn.joinable()) {
          if (!state->running && state->turn.joinable())
            state->turn.join();
          else
            throw std::invalid_argument("response_in_progress: a response is already running");
        }
        if (state->pending_user.empty())
          throw std::invalid_argument("no_input: add a user message first");
        state->turn = std::thread(
            [state, &writer, ctx, event_id] { start_turn(state, writer, ctx, event_id); });
      } else if (type == "response.cancel") {
        std::lock_guard lock(state->mutex);
        if (state->running) state->running->cancel();
        for (auto& [cid, p] : state->waiting) p->set_value("error: cancelled");
        state->waiting.clear();
      }
    } catch (const std::exception& e) {
      ++ctx.metrics.errors;
      const std::string what = e.what();
      const auto colon = what.find(": ");
      const std::string code = colon != std::string::npos && what.find(' ') > colon
                                   ? what.substr(0, colon)
                                   : "invalid_event";
      writer.send({{"type", "error"},
                   {"error", {{"code", code}, {"message", what}, {"event_id", event_id}}}});
    }
  }
  writer.mark_closed();
  // A client that disconnects cancels its generation; the state stays for a resume.
  {
    std::lock_guard lock(state->mutex);
    if (state->running) state->running->cancel();
    for (auto& [cid, p] : state->waiting) p->set_value("error: client disconnected");
    state->waiting.clear();
  }
  if (state->turn.joinable()) state->turn.join();
  --ctx.metrics.sessions_open;
}

}  // namespace agentrt::server
