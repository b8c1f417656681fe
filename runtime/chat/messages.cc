#include "runtime/chat/messages.h"

#include <stdexcept>

#include "tools/json_nesting.h"

namespace agentrt::chat {

namespace {

[[noreturn]] void fail(size_t index, const std::string& field, const std::string& what) {
  throw std::invalid_argument("messages[" + std::to_string(index) + "]" +
                              (field.empty() ? "" : "." + field) + ": " + what);
}

// OpenAI content: a string, null, or a list of {"type":"text","text":...} parts.
std::string content_text(const nlohmann::json& value, size_t index) {
  if (value.is_null()) return "";
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    std::string text;
    for (size_t i = 0; i < value.size(); ++i) {
      const auto& part = value[i];
      if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
          !part["text"].is_string()) {
        fail(index, "content[" + std::to_string(i) + "]",
             "only {\"type\":\"text\",\"text\":...} parts are supported");
      }
      text += part["text"].get<std::string>();
    }
    return text;
  }
  fail(index, "content", "expected a string, null or a list of text parts");
}

}  // namespace

std::string_view to_string(Message::Role role) {
  switch (role) {
    case Message::Role::system:
      return "system";
    case Message::Role::developer:
      return "developer";
    case Message::Role::user:
      return "user";
    case Message::Role::assistant:
      return "assistant";
    case Message::Role::tool:
      return "tool";
  }
  return "user";
}

Message::Role parse_role(std::string_view role, std::string_view where) {
  if (role == "system") return Message::Role::system;
  if (role == "developer") return Message::Role::developer;
  if (role == "user") return Message::Role::user;
  if (role == "assistant") return Message::Role::assistant;
  if (role == "tool") return Message::Role::tool;
  throw std::invalid_argument(std::string(where) + ": unknown role '" + std::string(role) + "'");
}

Message parse_message(const nlohmann::json& m, size_t index) {
  if (!m.is_object()) fail(index, "", "expected an object");
  if (nests_deeper_than(m))
    fail(index, "", "nested more than " + std::to_string(kMaxJsonNesting) + " levels deep");
  if (!m.contains("role") || !m["role"].is_string()) fail(index, "role", "missing or not a string");
  Message msg;
  msg.role =
      parse_role(m["role"].get<std::string>(), "messages[" + std::to_string(index) + "].role");
  if (m.contains("content")) msg.content = content_text(m["content"], index);
  if (m.contains("reasoning_content") && !m["reasoning_content"].is_null()) {
    if (!m["reasoning_content"].is_string()) fail(index, "reasoning_content", "expected a string");
    msg.reasoning_content = m["reasoning_content"].get<std::string>();
  }
  if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
    if (msg.role != Message::Role::assistant)
      fail(index, "tool_calls", "only assistant messages carry tool calls");
    if (!m["tool_calls"].is_array()) fail(index, "tool_calls", "expected an array");
    for (size_t i = 0; i < m["tool_calls"].size(); ++i) {
      const auto& tc = m["tool_calls"][i];
      const std::string field = "tool_calls[" + std::to_string(i) + "]";
      if (!tc.is_object() || !tc.contains("function") || !tc["function"].is_object()) {
        fail(index, field,
             "expected {\"id\", \"type\":\"function\", \"function\":{\"name\",\"arguments\"}}");
      }
      const auto& fn = tc["function"];
      if (!fn.contains("name") || !fn["name"].is_string())
        fail(index, field + ".function.name", "missing");
      ToolCall call;
      call.id = tc.value("id", "");
      call.name = fn["name"].get<std::string>();
      if (!fn.contains("arguments") || fn["arguments"].is_null()) {
        call.arguments_json = "{}";
      } else if (fn["arguments"].is_string()) {
        call.arguments_json = fn["arguments"].get<std::string>();
      } else if (fn["arguments"].is_object()) {
        call.arguments_json = fn["arguments"].dump();
      } else {
        fail(index, field + ".function.arguments", "expected a JSON string");
      }
      msg.tool_calls.push_back(std::move(call));
    }
  }
  if (msg.role == Message::Role::tool) {
    if (!m.contains("tool_call_id") || !m["tool_call_id"].is_string())
      fail(index, "tool_call_id", "missing");
    msg.tool_call_id = m["tool_call_id"].get<std::string>();
    if (m.contains("name") && m["name"].is_string()) msg.name = m["name"].get<std::string>();
  }
  return msg;
}

std::vector<Message> parse_messages(const nlohmann::json& openai_messages) {
  if (!openai_messages.is_array()) throw std::invalid_argument("messages: expected an array");
  std::vector<Message> out;
  out.reserve(openai_messages.size());
  for (size_t i = 0; i < openai_messages.size(); ++i)
    out.push_back(parse_message(openai_messages[i], i));
  return out;
}

nlohmann::ordered_json to_openai(const Message& m) {
  nlohmann::ordered_json j;
  j["role"] = std::string(to_string(m.role));
  j["content"] = m.content;
  if (!m.reasoning_content.empty()) j["reasoning_content"] = m.reasoning_content;
  if (!m.tool_calls.empty()) {
    j["tool_calls"] = nlohmann::ordered_json::array();
    for (const auto& tc : m.tool_calls) {
      j["tool_calls"].push_back(
          {{"id", tc.id},
           {"type", "function"},
           {"function", {{"name", tc.name}, {"arguments", tc.arguments_json}}}});
    }
  }
  if (m.role == Message::Role::tool) {
    j["tool_call_id"] = m.tool_call_id;
    if (!m.name.empty()) j["name"] = m.name;
  }
  return j;
}

nlohmann::ordered_json to_openai(const std::vector<Message>& messages) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const auto& m : messages) out.push_back(to_openai(m));
  return out;
}

}  // namespace agentrt::chat
