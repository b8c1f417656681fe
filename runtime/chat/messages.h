// OpenAI-style chat messages (system, developer, user, assistant with content /
// reasoning_content / tool_calls, tool results), parsed once from JSON with errors that name
// the message index and field.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace agentrt::chat {

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments_json;  // OpenAI: the arguments object as JSON text
};

struct Message {
  enum class Role { system, developer, user, assistant, tool };
  Role role = Role::user;
  std::string content;
  std::string reasoning_content;
  std::vector<ToolCall> tool_calls;
  std::string tool_call_id;  // role tool
  std::string name;          // role tool: the function's name (optional)
};

std::string_view to_string(Message::Role role);
Message::Role parse_role(std::string_view role, std::string_view where);

// Throws std::invalid_argument naming "messages[i].field" on bad input.
std::vector<Message> parse_messages(const nlohmann::json& openai_messages);
Message parse_message(const nlohmann::json& openai_message, size_t index = 0);
nlohmann::ordered_json to_openai(const Message& message);
nlohmann::ordered_json to_openai(const std::vector<Message>& messages);

}  // namespace agentrt::chat
