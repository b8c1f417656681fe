#include "runtime/server/chat_completions.h"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <random>
#include <sstream>

#include "tools/json_nesting.h"

namespace agentrt::server {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

std::string completion_id() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "chatcmpl-";
  for (int i = 0; i < 20; ++i) id += kHex[rd() % 16];
  return id;
}

std::string finish_name(const GenerationResult& g) {
  switch (g.finish) {
    case FinishReason::tool_calls:
      return "tool_calls";
    case FinishReason::length:
      return "length";
    default:
      return "stop";
  }
}

nlohmann::json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_prompt_tokens}}}};
}

}  // namespace

std::string http_response(unsigned status, const std::string& body,
                          const std::string& content_type) {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, content_type);
  res.set(http::field::server, "agentrt");
  res.keep_alive(false);
  res.body() = body;
  res.prepare_payload();
  std::ostringstream out;
  out << res;
  return out.str();
}

GenerationRequest parse_chat_request(const std::string& body, bool& stream, bool& include_usage) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(body);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(std::string("request body is not JSON: ") + e.what());
  }
  if (!j.is_object()) throw std::invalid_argument("request body must be a JSON object");
  if (nests_deeper_than(j))
    throw std::invalid_argument("request body nests more than " + std::to_string(kMaxJsonNesting) +
                                " levels deep");
  GenerationRequest r;
  if (!j.contains("messages")) throw std::invalid_argument("'messages' is required");
  r.messages = chat::parse_messages(nlohmann::json::parse(j["messages"].dump()));
  if (j.contains("tools") && !j["tools"].is_null()) {
    if (!j["tools"].is_array()) throw std::invalid_argument("'tools' must be an array");
    r.tools = j["tools"];
  }
  if (j.contains("tool_choice"))
    r.tool_choice = ToolChoice::from_json(nlohmann::json::parse(j["tool_choice"].dump()));
  if (j.contains("parallel_tool_calls"))
    r.parallel_tool_calls = j["parallel_tool_calls"].get<bool>();
  if (j.contains("response_format") && !j["response_format"].is_null()) {
    r.response_format = nlohmann::json::parse(j["response_format"].dump());
    if (r.response_format->value("type", "") == "text") r.response_format.reset();
  }
  const auto number = [&](const char* key) -> std::optional<double> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number())
      throw std::invalid_argument(std::string("'") + key + "' must be a number");
    return j[key].get<double>();
  };
  r.sampling.temperature = static_cast<float>(number("temperature").value_or(1.0));
  r.sampling.top_p = static_cast<float>(number("top_p").value_or(1.0));
  r.sampling.seed = static_cast<uint64_t>(number("seed").value_or(0));
  if (auto m = number("max_completion_tokens")) r.max_tokens = static_cast<int>(*m);
  if (auto m = number("max_tokens")) r.max_tokens = static_cast<int>(*m);
  if (r.max_tokens <= 0) throw std::invalid_argument("'max_tokens' must be positive");
  stream = j.value("stream", false);
  include_usage = j.contains("stream_options") && j["stream_options"].value("include_usage", false);
  return r;
}

void serve_chat_completion(const std::string& body, const CompletionContext& ctx,
                           const ByteSink& write_all) {
  bool stream = false, include_usage = false;
  GenerationRequest request;
  const auto send_error = [&](http::status status, const std::string& message) {
    ++ctx.metrics.errors;
    write_all(http_response(
        static_cast<unsigned>(status),
        nlohmann::json{{"error", {{"message", message}, {"type", "invalid_request_error"}}}}
            .dump()));
  };
  try {
    request = parse_chat_request(body, stream, include_usage);
  } catch (const std::exception& e) {
    send_error(http::status::bad_request, e.what());
    return;
  }
  const std::string id = completion_id();
  const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
  const auto chunk = [&](nlohmann::json delta, nlohmann::json finish = nullptr) {
    return "data: " +
           nlohmann::json{{"id", id},
                          {"object", "chat.completion.chunk"},
                          {"created", created},
                          {"model", ctx.model_name},
                          {"choices",
                           {{{"index", 0},
                             {"delta", std::move(delta)},
                             {"finish_reason", std::move(finish)}}}}}
               .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
           "\n\n";
  };
  std::atomic<bool> cancel{false};
  GenerationCallback on_event;
  if (stream) {
    write_all(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: "
        "no-cache\r\nConnection: close\r\n\r\n");
    write_all(chunk({{"role", "assistant"}, {"content", ""}}));
    on_event = [&](const chat::ParseEvent& e) {
      std::string out;
      switch (e.kind) {
        case chat::ParseEvent::Kind::content_delta:
          out = chunk({{"content", e.text}});
          break;
        case chat::ParseEvent::Kind::reasoning_delta:
          out = chunk({{"reasoning_content", e.text}});
          break;
        case chat::ParseEvent::Kind::tool_call_start:
          out = chunk({{"tool_calls",
                        {{{"index", e.index},
                          {"id", e.id},
                          {"type", "function"},
                          {"function", {{"name", e.name}, {"arguments", ""}}}}}}});
          break;
        case chat::ParseEvent::Kind::tool_call_arguments_delta:
          out = chunk(
              {{"tool_calls", {{{"index", e.index}, {"function", {{"arguments", e.text}}}}}}});
          break;
        default:
          break;
      }
      // A client that went away cancels its generation (and frees its cache).
      if (!out.empty() && !write_all(out)) cancel = true;
    };
  }
  const auto start = std::chrono::steady_clock::now();
  GenerationResult g;
  try {
    g = ctx.backend.generate(request, on_event, &cancel, {});
  } catch (const std::exception& e) {
    if (stream)
      write_all("data: " + nlohmann::json{{"error", {{"message", e.what()}}}}.dump() + "\n\n");
    else
      send_error(http::status::bad_request, e.what());
    return;
  }
  ctx.metrics.prompt_tokens += g.usage.prompt_tokens;
  ctx.metrics.completion_tokens += g.usage.completion_tokens;
  ctx.metrics.tool_calls += static_cast<int64_t>(g.message.tool_calls.size());
  ctx.metrics.latency_ms_total += std::chrono::duration_cast<std::chrono::milliseconds>(
                                      std::chrono::steady_clock::now() - start)
                                      .count();
  ++ctx.metrics.latency_count;
  if (stream) {
    write_all(chunk(nlohmann::json::object(), finish_name(g)));
    if (include_usage) {
      write_all("data: " +
                nlohmann::json{{"id", id},
                               {"object", "chat.completion.chunk"},
                               {"created", created},
                               {"model", ctx.model_name},
                               {"choices", nlohmann::json::array()},
                               {"usage", usage_json(g.usage)}}
                    .dump() +
                "\n\n");
    }
    write_all("data: [DONE]\n\n");
    return;
  }
  nlohmann::json message = {{"role", "assistant"}, {"content", g.message.content}};
  if (!g.message.reasoning_content.empty())
    message["reasoning_content"] = g.message.reasoning_content;
  if (!g.message.tool_calls.empty()) {
    message["tool_calls"] = nlohmann::json::array();
    for (const auto& c : g.message.tool_calls) {
      message["tool_calls"].push_back(
          {{"id", c.id},
           {"type", "function"},
           {"function", {{"name", c.name}, {"arguments", c.arguments_json}}}});
    }
  }
  write_all(http_response(
      200,
      nlohmann::json{
          {"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", ctx.model_name},
          {"choices", {{{"index", 0}, {"message", message}, {"finish_reason", finish_name(g)}}}},
          {"usage", usage_json(g.usage)}}
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)));
}

}  // namespace agentrt::server
