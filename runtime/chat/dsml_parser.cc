#include "runtime/chat/dsml_parser.h"

#include <nlohmann/json.hpp>

#include "grammars/python_json.h"
#include "runtime/chat/encode_v4.h"

namespace agentrt::chat {

namespace {

using grammars::python_json_string;

const std::string kBlockOpen = "<｜DSML｜tool_calls>";
const std::string kBlockClose = "</｜DSML｜tool_calls>";
const std::string kInvokeOpen = "<｜DSML｜invoke";
const std::string kInvokeClose = "</｜DSML｜invoke>";
const std::string kParamOpen = "<｜DSML｜parameter";
const std::string kParamClose = "</｜DSML｜parameter>";

// Length of the longest suffix of `text` that is a proper prefix of `marker`.
size_t partial_marker_suffix(std::string_view text, std::string_view marker) {
  const size_t max = std::min(text.size(), marker.size() - 1);
  for (size_t len = max; len > 0; --len) {
    if (marker.starts_with(text.substr(text.size() - len))) return len;
  }
  return 0;
}

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

}  // namespace

DsmlStreamParser::DsmlStreamParser(bool starts_in_thinking,
                                   std::function<std::string()> make_call_id)
    : make_call_id_(std::move(make_call_id)),
      state_(starts_in_thinking ? State::reasoning : State::content) {
  if (!make_call_id_) make_call_id_ = [this] { return "call_" + std::to_string(calls_made_); };
}

std::vector<ParseEvent> DsmlStreamParser::feed(std::string_view text) {
  std::vector<ParseEvent> events;
  buf_.append(text);
  run(events);
  return events;
}

void DsmlStreamParser::run(std::vector<ParseEvent>& events) {
  while (step(events)) {
  }
}

void DsmlStreamParser::fail(std::vector<ParseEvent>& events, const std::string& what) {
  if (state_ == State::failed) return;
  state_ = State::failed;
  error_ = what;
  events.push_back({ParseEvent::Kind::error, static_cast<int>(calls_.size()) - 1, what, "", ""});
  buf_.clear();
}

void DsmlStreamParser::emit_text(std::vector<ParseEvent>& events, ParseEvent::Kind kind,
                                 std::string_view text) {
  if (text.empty()) return;
  (kind == ParseEvent::Kind::reasoning_delta ? reasoning_ : content_).append(text);
  if (!events.empty() && events.back().kind == kind) {
    events.back().text.append(text);
  } else {
    events.push_back({kind, -1, std::string(text), "", ""});
  }
}

void DsmlStreamParser::emit_args(std::vector<ParseEvent>& events, std::string_view text) {
  if (text.empty()) return;
  ToolCall& call = calls_.back();
  call.arguments_json.append(text);
  const int index = static_cast<int>(calls_.size()) - 1;
  if (!events.empty() && events.back().kind == ParseEvent::Kind::tool_call_arguments_delta &&
      events.back().index == index) {
    events.back().text.append(text);
  } else {
    events.push_back({ParseEvent::Kind::tool_call_arguments_delta, index, std::string(text),
                      call.id, call.name});
  }
}

bool DsmlStreamParser::step(std::vector<ParseEvent>& events) {
  switch (state_) {
    case State::reasoning: {
      const size_t end = buf_.find(kThinkEnd);
      if (end != std::string::npos) {
        emit_text(events, ParseEvent::Kind::reasoning_delta, std::string_view(buf_).substr(0, end));
        buf_.erase(0, end + kThinkEnd.size());
        state_ = State::content;
        return true;
      }
      const size_t hold = finishing_ ? 0 : partial_marker_suffix(buf_, kThinkEnd);
      emit_text(events, ParseEvent::Kind::reasoning_delta,
                std::string_view(buf_).substr(0, buf_.size() - hold));
      buf_.erase(0, buf_.size() - hold);
      return false;
    }
    case State::content: {
      const size_t open = buf_.find(kBlockOpen);
      if (open != std::string::npos) {
        // The encoder puts "\n\n" between content and the block: not part of the content.
        size_t cut = open;
        for (int i = 0; i < 2 && cut > 0 && buf_[cut - 1] == '\n'; ++i) --cut;
        emit_text(events, ParseEvent::Kind::content_delta, std::string_view(buf_).substr(0, cut));
        buf_.erase(0, open + kBlockOpen.size());
        state_ = State::block;
        return true;
      }
      size_t hold = 0;
      if (!finishing_) {
        hold = std::max(partial_marker_suffix(buf_, kToolCallsStart),
                        partial_marker_suffix(buf_, kBlockOpen));
        // Trailing newlines may precede a block opener still to come.
        size_t newlines = 0;
        while (newlines < 2 && newlines < buf_.size() && buf_[buf_.size() - 1 - newlines] == '\n')
          ++newlines;
        hold = std::max(hold, newlines);
      }
      emit_text(events, ParseEvent::Kind::content_delta,
                std::string_view(buf_).substr(0, buf_.size() - hold));
      buf_.erase(0, buf_.size() - hold);
      return false;
    }
    case State::block:
    case State::invoke_body:
    case State::after_block: {
      size_t i = 0;
      while (i < buf_.size() && is_space(buf_[i])) ++i;
      buf_.erase(0, i);
      if (buf_.empty()) return false;
      if (state_ == State::after_block) {
        fail(events, "unexpected text after the tool-call block: '" + buf_.substr(0, 40) + "'");
        return false;
      }
      const std::string& close = state_ == State::block ? kBlockClose : kInvokeClose;
      const std::string& open = state_ == State::block ? kInvokeOpen : kParamOpen;
      if (buf_.starts_with(close)) {
        buf_.erase(0, close.size());
        if (state_ == State::block) {
          state_ = State::after_block;
        } else {
          ToolCall& call = calls_.back();
          if (first_param_) emit_args(events, "{");
          emit_args(events, "}");
          events.push_back({ParseEvent::Kind::tool_call_end, static_cast<int>(calls_.size()) - 1,
                            call.arguments_json, call.id, call.name});
          state_ = State::block;
        }
        return true;
      }
      if (buf_.starts_with(open)) {
        buf_.erase(0, open.size());
        state_ = state_ == State::block ? State::invoke_name : State::param_header;
        return true;
      }
      if (close.starts_with(buf_) || open.starts_with(buf_)) return false;  // need more
      fail(events, std::string("expected '") + open + "' or '" + close + "', got '" +
                       buf_.substr(0, 40) + "'");
      return false;
    }
    case State::invoke_name: {
      const size_t end = buf_.find("\">");
      if (end == std::string::npos) {
        if (buf_.size() > 512) fail(events, "tool name too long or malformed invoke tag");
        return false;
      }
      const std::string header = buf_.substr(0, end);
      const std::string prefix = " name=\"";
      if (!header.starts_with(prefix) || header.find('"', prefix.size()) != std::string::npos) {
        fail(events, "malformed invoke tag: '<｜DSML｜invoke" + header + "\">'");
        return false;
      }
      buf_.erase(0, end + 2);
      ToolCall call;
      call.name = header.substr(prefix.size());
      call.id = make_call_id_();
      ++calls_made_;
      calls_.push_back(call);
      first_param_ = true;
      events.push_back({ParseEvent::Kind::tool_call_start, static_cast<int>(calls_.size()) - 1, "",
                        call.id, call.name});
      state_ = State::invoke_body;
      return true;
    }
    case State::param_header: {
      const size_t end = buf_.find("\">");
      if (end == std::string::npos) {
        if (buf_.size() > 512) fail(events, "malformed parameter tag");
        return false;
      }
      const std::string header = buf_.substr(0, end + 1);  // name="P" string="true"
      const std::string prefix = " name=\"";
      const size_t name_end = header.find("\" string=\"");
      if (!header.starts_with(prefix) || name_end == std::string::npos) {
        fail(events, "malformed parameter tag: '<｜DSML｜parameter" + header + ">'");
        return false;
      }
      const std::string flag = header.substr(name_end + 10, header.size() - name_end - 11);
      if (flag != "true" && flag != "false") {
        fail(events, "parameter string flag must be \"true\" or \"false\", got '" + flag + "'");
        return false;
      }
      param_name_ = header.substr(prefix.size(), name_end - prefix.size());
      param_is_string_ = flag == "true";
      param_raw_.clear();
      buf_.erase(0, end + 2);
      emit_args(events, std::string(first_param_ ? "{" : ", ") + python_json_string(param_name_) +
                            ": " + (param_is_string_ ? "\"" : ""));
      first_param_ = false;
      state_ = State::param_value;
      return true;
    }
    case State::param_value: {
      const size_t end = buf_.find(kParamClose);
      const size_t take =
          end != std::string::npos
              ? end
              : buf_.size() - (finishing_ ? 0 : partial_marker_suffix(buf_, kParamClose));
      const std::string_view piece = std::string_view(buf_).substr(0, take);
      if (param_is_string_) {
        const std::string quoted = python_json_string(piece);
        emit_args(events, std::string_view(quoted).substr(1, quoted.size() - 2));
      } else {
        param_raw_.append(piece);
        emit_args(events, piece);
      }
      buf_.erase(0, take);
      if (end == std::string::npos) return false;
      buf_.erase(0, kParamClose.size());
      if (param_is_string_) {
        emit_args(events, "\"");
      } else if (!nlohmann::json::accept(param_raw_)) {
        fail(events, "tool call '" + calls_.back().name + "': parameter '" + param_name_ +
                         "' has string=\"false\" but its value is not JSON: '" +
                         param_raw_.substr(0, 80) + "'");
        return false;
      }
      state_ = State::invoke_body;
      return true;
    }
    case State::failed:
      buf_.clear();
      return false;
  }
  return false;
}

DsmlStreamParser::Final DsmlStreamParser::finish(bool hit_max_tokens) {
  finishing_ = true;
  std::vector<ParseEvent> events;
  run(events);
  const bool in_block = state_ == State::block || state_ == State::invoke_name ||
                        state_ == State::invoke_body || state_ == State::param_header ||
                        state_ == State::param_value;
  if (in_block) {
    const std::string what = std::string("output ended inside the tool-call block") +
                             (hit_max_tokens ? " (max tokens)" : "");
    error_ = what;
    events.push_back({ParseEvent::Kind::error, static_cast<int>(calls_.size()) - 1, what, "", ""});
    // A call whose invoke did not close is not returned.
    if (state_ != State::block && !calls_.empty()) calls_.pop_back();
  }
  Final out;
  out.truncated = in_block || state_ == State::reasoning;
  out.content = content_;
  out.reasoning_content = reasoning_;
  out.tool_calls = calls_;
  out.error = error_;
  final_events_ = std::move(events);
  return out;
}

}  // namespace agentrt::chat
