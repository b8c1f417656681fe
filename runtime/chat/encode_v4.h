// DeepSeek-V4 prompt encoding, byte for byte as DeepSeek's encoding/encoding_dsv4.py:
// BOS, <｜User｜>/<｜Assistant｜> turns, the "## Tools" block (one JSON line per tool schema),
// thinking and non-thinking modes, the reasoning-effort prompt, tool results merged into the
// following user turn as <tool_result> blocks in call order, historical reasoning dropped.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "runtime/chat/messages.h"

namespace agentrt::chat {

inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUserToken = "<｜User｜>";
inline constexpr std::string_view kAssistantToken = "<｜Assistant｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";
inline constexpr std::string_view kDsml = "｜DSML｜";
// What the model writes before a tool-call block (the encoder renders calls after "\n\n").
inline constexpr std::string_view kToolCallsStart = "\n\n<｜DSML｜tool_calls>";

enum class ThinkingMode { non_thinking, thinking };

struct EncodeOptions {
  ThinkingMode thinking = ThinkingMode::non_thinking;
  std::string reasoning_effort;  // "", "high" or "max" (max adds the effort prompt)
  bool drop_thinking = true;     // drop reasoning of turns before the last user message
  bool add_bos = true;
  // When set, message text (content, reasoning, tool results) is wrapped in these markers so a
  // tokenizer can treat it as plain text (no special tokens injected through content); see
  // split_marked_prompt(). Empty: no markers (the encoder's exact output).
  bool mark_message_text = false;
};

// Markers used by mark_message_text: bytes that never occur in valid UTF-8.
inline constexpr std::string_view kDataOpen = "\xFF\xFE";
inline constexpr std::string_view kDataClose = "\xFF\xFD";

struct PromptSegment {
  std::string text;
  bool message_text;  // true: from a message, tokenise without special tokens
};
// Splits a prompt encoded with mark_message_text into template and message-text segments.
std::vector<PromptSegment> split_marked_prompt(std::string_view prompt);

// The encoder's own input: OpenAI messages where system/developer messages may carry "tools"
// (OpenAI tools array) and "response_format", plus the encoder's extra fields ("task",
// "wo_eos"). `context` is an already-encoded prefix (no BOS is added when it is non-empty).
std::string encode_v4_json(const nlohmann::ordered_json& messages, const EncodeOptions& options,
                           const nlohmann::ordered_json& context = nlohmann::ordered_json::array());

// The runtime's entry point: the request's tools (and response_format) go on the first system
// message; one with empty content is inserted at the front when the conversation has none.
std::string encode_v4(std::span<const Message> messages, const nlohmann::ordered_json& tools,
                      const EncodeOptions& options,
                      const std::optional<nlohmann::json>& response_format = std::nullopt);

// One assistant tool call in DSML, as the encoder renders it (parameters from the arguments'
// JSON object, strings raw with string="true", other values as JSON with string="false").
std::string render_dsml_invoke(std::string_view name, std::string_view arguments_json);

}  // namespace agentrt::chat
