#include "runtime/server/client_events.h"

#include <stdexcept>

#include "tools/json_nesting.h"

namespace agentrt::server {

namespace {

[[noreturn]] void fail(const std::string& code, const std::string& message) {
  throw std::invalid_argument(code + ": " + message);
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string())
    fail("invalid_event", where + "." + key + " must be a string");
  return j[key].get<std::string>();
}

int positive_int(const nlohmann::json& j, const char* key) {
  const auto& v = j[key];
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > 1'000'000)
    fail("invalid_event", std::string("session.") + key + " must be a positive integer");
  return v.get<int>();
}

}  // namespace

ClientEvent parse_client_event(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) fail("invalid_json", "the message is not JSON");
  if (nests_deeper_than(j))
    fail("invalid_json",
         "the message nests more than " + std::to_string(kMaxJsonNesting) + " levels deep");
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail("invalid_event", "an event needs a string 'type'");
  ClientEvent e;
  if (j.contains("event_id")) {
    if (!j["event_id"].is_string()) fail("invalid_event", "event_id must be a string");
    e.event_id = j["event_id"].get<std::string>();
  }
  const std::string type = j["type"].get<std::string>();
  if (type == "session.update")
    e.type = ClientEventType::session_update;
  else if (type == "conversation.item.create")
    e.type = ClientEventType::item_create;
  else if (type == "response.create")
    e.type = ClientEventType::response_create;
  else if (type == "response.cancel")
    e.type = ClientEventType::response_cancel;
  else
    fail("unknown_event", "unknown event type '" + type + "'");
  e.body = std::move(j);
  return e;
}

SessionUpdate parse_session_update(const nlohmann::json& session) {
  if (!session.is_object()) fail("invalid_event", "session must be an object");
  SessionUpdate u;
  if (session.contains("instructions"))
    u.instructions = string_field(session, "instructions", "session");
  if (session.contains("tool_choice")) {
    try {
      u.tool_choice = ToolChoice::from_json(session["tool_choice"]);
    } catch (const std::exception& e) {
      fail("invalid_event", std::string("session.tool_choice: ") + e.what());
    }
  }
  if (session.contains("max_steps")) u.max_steps = positive_int(session, "max_steps");
  if (session.contains("max_tokens")) u.max_tokens = positive_int(session, "max_tokens");
  if (session.contains("tools")) {
    if (!session["tools"].is_array()) fail("invalid_tool", "session.tools must be an array");
    SessionUpdate::Tools tools;
    for (const auto& t : session["tools"]) {
      if (!t.is_object()) fail("invalid_tool", "a tool must be an object");
      const std::string type = t.contains("type") ? string_field(t, "type", "tool") : "function";
      const std::string name = t.contains("name") ? string_field(t, "name", "tool") : "";
      if (name.empty()) fail("invalid_tool", "a tool needs a name");
      if (type == "builtin") {
        tools.builtin_names.push_back(name);
      } else if (type == "function") {
        if (t.contains("parameters") && !t["parameters"].is_object())
          fail("invalid_tool", "tool '" + name + "': parameters must be an object");
        tools.client_tools.push_back(t);
      } else {
        fail("invalid_tool", "tool type must be 'builtin' or 'function'");
      }
    }
    u.tools = std::move(tools);
  }
  return u;
}

ConversationItem parse_conversation_item(const nlohmann::json& item) {
  if (!item.is_object()) fail("invalid_event", "item must be an object");
  ConversationItem c;
  const std::string type = item.contains("type") ? string_field(item, "type", "item") : "message";
  if (type == "function_call_output") {
    c.kind = ConversationItem::Kind::function_call_output;
    c.call_id = string_field(item, "call_id", "item");
    if (item.contains("output")) c.text = string_field(item, "output", "item");
    return c;
  }
  if (type != "message")
    fail("invalid_event", "item.type must be 'message' or 'function_call_output'");
  if (item.contains("content") && item["content"].is_string()) {
    c.text = item["content"].get<std::string>();
  } else if (item.contains("content")) {
    if (!item["content"].is_array())
      fail("invalid_event", "item.content must be a string or an array");
    for (const auto& part : item["content"]) {
      if (!part.is_object()) fail("invalid_event", "item.content parts must be objects");
      if (part.contains("text")) c.text += string_field(part, "text", "item.content[]");
    }
  }
  return c;
}

}  // namespace agentrt::server
