// Streaming parser of DeepSeek-V4 output: reasoning (up to </think>), content, and DSML tool
// calls, fed decoded text as tokens arrive. Markers may be split anywhere across feed() calls
// (even inside the 3-byte fullwidth bar); only text that could still start a marker is held
// back. Tool calls come out in OpenAI form: the name as soon as it is known, then the
// `arguments` JSON text growing delta by delta (string="true" values raw and JSON-escaped,
// others passed through and validated as JSON when the parameter closes).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/chat/messages.h"

namespace agentrt::chat {

struct ParseEvent {
  enum class Kind {
    reasoning_delta,
    content_delta,
    tool_call_start,            // index, id, name
    tool_call_arguments_delta,  // index, text: a piece of the OpenAI arguments JSON string
    tool_call_end,              // index, id, name, text: the complete arguments JSON
    error,                      // text: what was malformed and where
  };
  Kind kind;
  int index = -1;
  std::string text;
  std::string id;
  std::string name;
};

class DsmlStreamParser {
 public:
  // starts_in_thinking: the prompt ended with <think>, so output begins with reasoning.
  // make_call_id: ids for tool calls (default "call_<n>" counting from 0 per parser).
  explicit DsmlStreamParser(bool starts_in_thinking,
                            std::function<std::string()> make_call_id = {});

  std::vector<ParseEvent> feed(std::string_view text);

  struct Final {
    std::string content;
    std::string reasoning_content;
    std::vector<ToolCall> tool_calls;
    bool truncated = false;  // output ended inside reasoning or a tool call
    std::string error;       // malformed DSML, if any
  };
  // Flushes what was held back. hit_max_tokens marks an unfinished structure as truncated.
  Final finish(bool hit_max_tokens);
  std::vector<ParseEvent> take_final_events() { return std::move(final_events_); }

  bool in_tool_calls() const { return state_ != State::reasoning && state_ != State::content; }

 private:
  enum class State {
    reasoning,
    content,
    block,         // inside <｜DSML｜tool_calls>, expecting an invoke or the closer
    invoke_name,   // reading name="...">
    invoke_body,   // expecting a parameter or </｜DSML｜invoke>
    param_header,  // reading name="..." string="...">
    param_value,   // reading the value up to </｜DSML｜parameter>
    after_block,   // the block closed; only whitespace may follow
    failed,
  };

  void run(std::vector<ParseEvent>& events);
  bool step(std::vector<ParseEvent>& events);  // false: needs more input
  void fail(std::vector<ParseEvent>& events, const std::string& what);
  void emit_text(std::vector<ParseEvent>& events, ParseEvent::Kind kind, std::string_view text);
  void emit_args(std::vector<ParseEvent>& events, std::string_view text);

  std::function<std::string()> make_call_id_;
  State state_;
  std::string buf_;  // unconsumed input
  bool finishing_ = false;
  int calls_made_ = 0;
  std::string content_, reasoning_, error_;
  std::vector<ToolCall> calls_;
  // The call being parsed.
  std::string param_name_;
  bool param_is_string_ = false;
  std::string param_raw_;  // non-string value text, validated at the closer
  bool first_param_ = true;
  std::vector<ParseEvent> final_events_;
};

}  // namespace agentrt::chat
