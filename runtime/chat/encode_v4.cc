#include "runtime/chat/encode_v4.h"

#include <algorithm>
#include <stdexcept>

#include "grammars/python_json.h"
#include "tools/json_nesting.h"

namespace agentrt::chat {

namespace {

using grammars::python_json_dumps;
using ojson = nlohmann::ordered_json;

constexpr std::string_view kReasoningEffortMax =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root "
    "cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
    "adversarial "
    "scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

constexpr std::string_view kLatestReminderToken = "<｜latest_reminder｜>";

std::string task_token(const std::string& task) {
  static constexpr std::pair<std::string_view, std::string_view> kTasks[] = {
      {"action", "<｜action｜>"}, {"query", "<｜query｜>"}, {"authority", "<｜authority｜>"},
      {"domain", "<｜domain｜>"}, {"title", "<｜title｜>"}, {"read_url", "<｜read_url｜>"}};
  for (const auto& [name, token] : kTasks) {
    if (name == task) return std::string(token);
  }
  throw std::invalid_argument("message task '" + task +
                              "' is not one of action, query, authority, domain, title, read_url");
}

std::string str(const ojson& m, const char* key) {
  if (!m.contains(key) || m[key].is_null()) return "";
  if (!m[key].is_string())
    throw std::invalid_argument(std::string("message field '") + key + "' must be a string");
  return m[key].get<std::string>();
}

bool truthy(const ojson& m, const char* key) {
  if (!m.contains(key) || m[key].is_null()) return false;
  const auto& v = m[key];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_array() || v.is_object() || v.is_string()) return !v.empty();
  return true;
}

std::string render_tools(const ojson& tools) {
  std::string schemas;
  for (size_t i = 0; i < tools.size(); ++i) {
    if (!tools[i].contains("function"))
      throw std::invalid_argument("tools[" + std::to_string(i) + "]: missing 'function'");
    if (i) schemas += "\n";
    schemas += python_json_dumps(tools[i]["function"]);
  }
  const std::string d(kDsml);
  return "## Tools\n\nYou have access to a set of tools to help answer the user's question. You "
         "can invoke tools by "
         "writing a \"<" +
         d + "tool_calls>\" block like the following:\n\n<" + d + "tool_calls>\n<" + d +
         "invoke name=\"$TOOL_NAME\">\n<" + d +
         "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" + d +
         "parameter>\n...\n</" + d + "invoke>\n<" + d + "invoke name=\"$TOOL_NAME2\">\n...\n</" +
         d + "invoke>\n</" + d +
         "tool_calls>\n\nString parameters should be specified as is and set `string=\"true\"`. "
         "For all other types "
         "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
         "`string=\"false\"`.\n\nIf "
         "thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
         "inside "
         "<think>...</think> BEFORE any tool calls or final response.\n\nOtherwise, output "
         "directly after </think> "
         "with tool calls or final response.\n\n### Available Tool Schemas\n\n" +
         schemas +
         "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
         "tool calls.\n";
}

std::string render_response_format(const ojson& format) {
  return "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n" +
         python_json_dumps(format);
}

int last_user_index(const ojson& messages) {
  for (int i = static_cast<int>(messages.size()) - 1; i >= 0; --i) {
    const std::string role = str(messages[i], "role");
    if (role == "user" || role == "developer") return i;
  }
  return -1;
}

// Tool messages become tool_result blocks of a user message; consecutive user content merges.
ojson merge_tool_messages(const ojson& messages) {
  ojson merged = ojson::array();
  for (const auto& msg : messages) {
    const std::string role = str(msg, "role");
    const bool prev_user_blocks = !merged.empty() && str(merged.back(), "role") == "user" &&
                                  merged.back().contains("content_blocks");
    if (role == "tool") {
      ojson block = {{"type", "tool_result"},
                     {"tool_use_id", str(msg, "tool_call_id")},
                     {"content", msg.value("content", ojson(""))}};
      if (prev_user_blocks) {
        merged.back()["content_blocks"].push_back(block);
      } else {
        merged.push_back({{"role", "user"}, {"content_blocks", ojson::array({block})}});
      }
    } else if (role == "user") {
      ojson text_block = {{"type", "text"}, {"text", msg.value("content", ojson(""))}};
      if (prev_user_blocks &&
          (!merged.back().contains("task") || merged.back()["task"].is_null())) {
        merged.back()["content_blocks"].push_back(text_block);
      } else {
        ojson m = {{"role", "user"},
                   {"content", msg.value("content", ojson(""))},
                   {"content_blocks", ojson::array({text_block})}};
        for (const char* key : {"task", "wo_eos", "mask"}) {
          if (msg.contains(key)) m[key] = msg[key];
        }
        merged.push_back(std::move(m));
      }
    } else {
      merged.push_back(msg);
    }
  }
  return merged;
}

// Tool results in a user message follow the order of the calls of the latest assistant turn.
void sort_tool_results(ojson& messages) {
  std::vector<std::pair<std::string, int>> order;
  const auto rank = [&](const std::string& id) {
    for (const auto& [k, v] : order) {
      if (k == id) return v;
    }
    return 0;
  };
  for (auto& msg : messages) {
    const std::string role = str(msg, "role");
    if (role == "assistant" && truthy(msg, "tool_calls")) {
      order.clear();
      int idx = 0;
      for (const auto& tc : msg["tool_calls"]) {
        std::string id =
            tc.contains("id") && tc["id"].is_string() ? tc["id"].get<std::string>() : "";
        if (id.empty() && tc.contains("function") && tc["function"].contains("id"))
          id = tc["function"]["id"].get<std::string>();
        if (!id.empty()) order.emplace_back(id, idx);
        ++idx;
      }
    } else if (role == "user" && truthy(msg, "content_blocks")) {
      std::vector<ojson> tool_blocks;
      for (const auto& b : msg["content_blocks"]) {
        if (str(b, "type") == "tool_result") tool_blocks.push_back(b);
      }
      if (tool_blocks.size() > 1 && !order.empty()) {
        std::stable_sort(tool_blocks.begin(), tool_blocks.end(),
                         [&](const ojson& a, const ojson& b) {
                           return rank(str(a, "tool_use_id")) < rank(str(b, "tool_use_id"));
                         });
        size_t k = 0;
        for (auto& b : msg["content_blocks"]) {
          if (str(b, "type") == "tool_result") b = tool_blocks[k++];
        }
      }
    }
  }
}

ojson drop_thinking_messages(const ojson& messages) {
  const int last_user = last_user_index(messages);
  ojson result = ojson::array();
  for (int i = 0; i < static_cast<int>(messages.size()); ++i) {
    const std::string role = str(messages[i], "role");
    if (role == "user" || role == "system" || role == "tool" || role == "latest_reminder" ||
        role == "direct_search_results" || i >= last_user) {
      result.push_back(messages[i]);
    } else if (role == "assistant") {
      ojson m = messages[i];
      m.erase("reasoning_content");
      result.push_back(std::move(m));
    }
  }
  return result;
}

std::string tool_result_text(const ojson& content) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_array()) {
    std::string out;
    for (size_t i = 0; i < content.size(); ++i) {
      if (i) out += "\n\n";
      const auto& b = content[i];
      out += str(b, "type") == "text" ? str(b, "text") : "[Unsupported " + str(b, "type") + "]";
    }
    return out;
  }
  if (content.is_null()) return "None";
  return python_json_dumps(content);
}

std::string render_message(int index, const ojson& messages, bool thinking, bool drop_thinking,
                           const std::string& effort) {
  const ojson& msg = messages[index];
  const int last_user = last_user_index(messages);
  const std::string role = str(msg, "role");
  std::string prompt;
  if (index == 0 && thinking && effort == "max") prompt += kReasoningEffortMax;

  const auto tools_and_format = [&](std::string& out) {
    if (truthy(msg, "tools")) out += "\n\n" + render_tools(msg["tools"]);
    if (truthy(msg, "response_format"))
      out += "\n\n" + render_response_format(msg["response_format"]);
  };

  if (role == "system") {
    prompt += str(msg, "content");
    tools_and_format(prompt);
  } else if (role == "developer") {
    if (str(msg, "content").empty())
      throw std::invalid_argument("developer message without content");
    std::string text = std::string(kUserToken) + str(msg, "content");
    tools_and_format(text);
    prompt += text;
  } else if (role == "user") {
    prompt += kUserToken;
    if (truthy(msg, "content_blocks")) {
      bool first = true;
      for (const auto& block : msg["content_blocks"]) {
        if (!first) prompt += "\n\n";
        first = false;
        const std::string type = str(block, "type");
        if (type == "text")
          prompt += block.contains("text") && block["text"].is_string()
                        ? block["text"].get<std::string>()
                        : "";
        else if (type == "tool_result")
          prompt += "<tool_result>" + tool_result_text(block.value("content", ojson(""))) +
                    "</tool_result>";
        else
          prompt += "[Unsupported " + type + "]";
      }
    } else {
      prompt += str(msg, "content");
    }
  } else if (role == "latest_reminder") {
    prompt += std::string(kLatestReminderToken) + str(msg, "content");
  } else if (role == "tool") {
    throw std::logic_error("tool messages must be merged into user messages first");
  } else if (role == "assistant") {
    std::string tool_calls;
    if (truthy(msg, "tool_calls")) {
      std::string invokes;
      bool first = true;
      for (const auto& tc : msg["tool_calls"]) {
        if (!first) invokes += "\n";
        first = false;
        const auto& fn = tc.at("function");
        const std::string args = fn.contains("arguments") && fn["arguments"].is_string()
                                     ? fn["arguments"].get<std::string>()
                                     : python_json_dumps(fn.value("arguments", ojson::object()));
        invokes += render_dsml_invoke(str(fn, "name"), args);
      }
      const std::string d(kDsml);
      tool_calls = "\n\n<" + d + "tool_calls>\n" + invokes + "\n</" + d + "tool_calls>";
    }
    const bool prev_has_task = index >= 1 && messages[index - 1].contains("task") &&
                               !messages[index - 1]["task"].is_null();
    std::string thinking_part;
    if (thinking && !prev_has_task && (!drop_thinking || index > last_user)) {
      thinking_part = str(msg, "reasoning_content") + std::string(kThinkEnd);
    }
    prompt += thinking_part + str(msg, "content") + tool_calls;
    if (!truthy(msg, "wo_eos")) prompt += kEos;
  } else {
    throw std::invalid_argument("unknown role '" + role + "'");
  }

  if (index + 1 < static_cast<int>(messages.size())) {
    const std::string next = str(messages[index + 1], "role");
    if (next != "assistant" && next != "latest_reminder") return prompt;
  }
  if (msg.contains("task") && !msg["task"].is_null()) {
    const std::string task = msg["task"].get<std::string>();
    const std::string token = task_token(task);
    if (task != "action") {
      prompt += token;
    } else {
      prompt +=
          std::string(kAssistantToken) + std::string(thinking ? kThinkStart : kThinkEnd) + token;
    }
  } else if (role == "user" || role == "developer") {
    prompt += kAssistantToken;
    const bool start_thinking = thinking && (!drop_thinking || index >= last_user);
    prompt += start_thinking ? kThinkStart : kThinkEnd;
  }
  return prompt;
}

}  // namespace

std::string render_dsml_invoke(std::string_view name, std::string_view arguments_json) {
  ojson args;
  try {
    args = ojson::parse(arguments_json);
  } catch (const nlohmann::json::exception&) {
    args = ojson{{"arguments", std::string(arguments_json)}};
  }
  if (!args.is_object())
    throw std::invalid_argument("tool call '" + std::string(name) +
                                "': arguments must be a JSON object");
  if (nests_deeper_than(args))
    throw std::invalid_argument("tool call '" + std::string(name) +
                                "': arguments nested more than " + std::to_string(kMaxJsonNesting) +
                                " levels deep");
  const std::string d(kDsml);
  std::string params;
  bool first = true;
  for (const auto& [key, value] : args.items()) {
    if (!first) params += "\n";
    first = false;
    const bool is_string = value.is_string();
    params += "<" + d + "parameter name=\"" + key + "\" string=\"" +
              (is_string ? "true" : "false") + "\">" +
              (is_string ? value.get<std::string>() : python_json_dumps(value)) + "</" + d +
              "parameter>";
  }
  return "<" + d + "invoke name=\"" + std::string(name) + "\">\n" + params + "\n</" + d + "invoke>";
}

std::string encode_v4_json(const ojson& messages_in, const EncodeOptions& options,
                           const ojson& context_in) {
  const bool thinking = options.thinking == ThinkingMode::thinking;
  if (!options.reasoning_effort.empty() && options.reasoning_effort != "max" &&
      options.reasoning_effort != "high") {
    throw std::invalid_argument("reasoning_effort must be \"high\" or \"max\", not '" +
                                options.reasoning_effort + "'");
  }
  ojson context = context_in.is_array() ? context_in : ojson::array();
  ojson messages = merge_tool_messages(messages_in);
  {
    ojson all = context;
    for (const auto& m : messages) all.push_back(m);
    sort_tool_results(all);
    messages = ojson::array();
    for (size_t i = context.size(); i < all.size(); ++i) messages.push_back(all[i]);
  }
  if (!context.empty()) {
    context = merge_tool_messages(context);
    sort_tool_results(context);
  }
  ojson full = context;
  for (const auto& m : messages) full.push_back(m);

  std::string prompt = options.add_bos && context.empty() ? std::string(kBos) : "";
  bool drop = options.drop_thinking;
  for (const auto& m : full) {
    if (truthy(m, "tools")) drop = false;
  }
  size_t to_render = messages.size(), context_len = context.size();
  if (thinking && drop) {
    full = drop_thinking_messages(full);
    to_render = full.size() - drop_thinking_messages(context).size();
    context_len = full.size() - to_render;
  }
  for (size_t i = 0; i < to_render; ++i) {
    prompt += render_message(static_cast<int>(i + context_len), full, thinking, drop,
                             options.reasoning_effort);
  }
  return prompt;
}

std::string encode_v4(std::span<const Message> messages, const nlohmann::ordered_json& tools,
                      const EncodeOptions& options,
                      const std::optional<nlohmann::json>& response_format) {
  std::vector<Message> copy(messages.begin(), messages.end());
  if (options.mark_message_text) {
    // 0xFF never occurs in valid UTF-8; a message that carries it anyway has it replaced, so
    // it cannot forge a marker.
    const auto scrub = [](std::string& text) {
      for (size_t i = 0; (i = text.find('\xFF', i)) != std::string::npos;)
        text.replace(i, 1, "\xEF\xBF\xBD");
    };
    const auto mark = [&](std::string& text) {
      scrub(text);
      if (!text.empty()) text = std::string(kDataOpen) + text + std::string(kDataClose);
    };
    for (auto& m : copy) {
      mark(m.content);
      mark(m.reasoning_content);
    }
  }
  ojson list = to_openai(copy);
  const bool has_tools = tools.is_array() && !tools.empty();
  if (has_tools || response_format) {
    auto it = std::find_if(list.begin(), list.end(),
                           [](const ojson& m) { return m["role"] == "system"; });
    if (it == list.end())
      it = list.insert(list.begin(), ojson{{"role", "system"}, {"content", ""}});
    if (has_tools) (*it)["tools"] = tools;
    if (response_format) (*it)["response_format"] = ojson::parse(response_format->dump());
  }
  return encode_v4_json(list, options);
}

std::vector<PromptSegment> split_marked_prompt(std::string_view prompt) {
  std::vector<PromptSegment> out;
  size_t pos = 0;
  while (pos < prompt.size()) {
    const size_t open = prompt.find(kDataOpen, pos);
    if (open == std::string_view::npos) {
      out.push_back({std::string(prompt.substr(pos)), false});
      break;
    }
    if (open > pos) out.push_back({std::string(prompt.substr(pos, open - pos)), false});
    const size_t begin = open + kDataOpen.size();
    const size_t close = prompt.find(kDataClose, begin);
    const size_t end = close == std::string_view::npos ? prompt.size() : close;
    out.push_back({std::string(prompt.substr(begin, end - begin)), true});
    pos = close == std::string_view::npos ? prompt.size() : close + kDataClose.size();
  }
  return out;
}

}  // namespace agentrt::chat
