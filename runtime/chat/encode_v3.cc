#include "runtime/chat/encode_v3.h"

#include "runtime/chat/encode_v4.h"

namespace agentrt::chat {

std::string encode_v3(std::span<const Message> messages, const EncodeV3Options& options) {
  std::string system;
  bool first_system = true;
  for (const auto& m : messages) {
    if (m.role != Message::Role::system) continue;
    system += (first_system ? "" : "\n\n") + m.content;
    first_system = false;
  }
  std::string out = (options.add_bos ? std::string(kBos) : "") + system;
  bool is_first = false, is_tool = false, is_output_first = true;
  const auto call_text = [](const ToolCall& call) {
    return std::string("function<｜tool▁sep｜>") + call.name + "\n```json\n" + call.arguments_json +
           "\n```<｜tool▁call▁end｜>";
  };
  for (const auto& m : messages) {
    switch (m.role) {
      case Message::Role::user:
        is_tool = false;
        out += std::string(kUserToken) + m.content;
        break;
      case Message::Role::assistant:
        if (!m.tool_calls.empty() && m.content.empty()) {  // the template's "content is none"
          is_tool = false;
          for (const auto& call : m.tool_calls) {
            if (!is_first) {
              out += "<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>" + call_text(call);
              is_first = true;
            } else {
              out += "\n<｜tool▁call▁begin｜>" + call_text(call) +
                     "<｜tool▁calls▁end｜><｜end▁of▁sentence｜>";
            }
          }
        } else {
          if (is_tool) {
            out += "<｜tool▁outputs▁end｜>" + m.content + std::string(kEos);
            is_tool = false;
          } else {
            out += std::string(kAssistantToken) + m.content + std::string(kEos);
          }
        }
        break;
      case Message::Role::tool:
        is_tool = true;
        if (is_output_first) {
          out += "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>" + m.content +
                 "<｜tool▁output▁end｜>";
          is_output_first = false;
        } else {
          out += "\n<｜tool▁output▁begin｜>" + m.content + "<｜tool▁output▁end｜>";
        }
        break;
      default:
        break;  // system handled above; developer messages do not exist in V3
    }
  }
  if (is_tool) out += "<｜tool▁outputs▁end｜>";
  if (options.add_generation_prompt && !is_tool) out += kAssistantToken;
  return out;
}

}  // namespace agentrt::chat
