// Parsing of WebSocket client events (protocol: docs/server.md). Outside input: every function
// throws std::invalid_argument whose message starts with the protocol error code
// ("invalid_json: ...", "unknown_event: ..."), and nothing else (fuzz/server_events.cc).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime/backend.h"

namespace agentrt::server {

enum class ClientEventType { session_update, item_create, response_create, response_cancel };

struct ClientEvent {
  ClientEventType type;
  std::string event_id;
  nlohmann::json body;  // the whole event
};

// Validates the envelope: a JSON object with a known string `type`.
ClientEvent parse_client_event(const std::string& text);

// session.update's `session` object, validated field by field.
struct SessionUpdate {
  std::optional<std::string> instructions;
  std::optional<ToolChoice> tool_choice;
  std::optional<int> max_steps;
  std::optional<int> max_tokens;
  struct Tools {
    std::vector<std::string> builtin_names;
    nlohmann::json client_tools = nlohmann::json::array();  // {type:function, name, parameters}
  };
  std::optional<Tools> tools;
};
SessionUpdate parse_session_update(const nlohmann::json& session);

// conversation.item.create's `item`.
struct ConversationItem {
  enum class Kind { user_message, function_call_output } kind = Kind::user_message;
  std::string text;  // the message, or the tool output
  std::string call_id;
};
ConversationItem parse_conversation_item(const nlohmann::json& item);

}  // namespace agentrt::server
