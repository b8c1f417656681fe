#include "runtime/backend.h"

#include <stdexcept>

namespace agentrt {

ToolChoice ToolChoice::from_json(const nlohmann::json& value) {
  ToolChoice c;
  if (value.is_null()) return c;
  if (value.is_string()) {
    const std::string s = value.get<std::string>();
    if (s == "auto")
      c.mode = Mode::automatic;
    else if (s == "none")
      c.mode = Mode::none;
    else if (s == "required" || s == "any")
      c.mode = Mode::required;
    else
      throw std::invalid_argument(
          "tool_choice: expected \"auto\", \"none\", \"required\" or "
          "{\"type\":\"function\",\"function\":{\"name\":...}}, got \"" +
          s + "\"");
    return c;
  }
  if (value.is_object()) {
    const nlohmann::json* fn = value.contains("function") ? &value["function"] : &value;
    if (fn->is_object() && fn->contains("name") && (*fn)["name"].is_string() &&
        !(*fn)["name"].get<std::string>().empty()) {
      c.mode = Mode::named;
      c.name = (*fn)["name"].get<std::string>();
      return c;
    }
    throw std::invalid_argument(
        "tool_choice: an object must be {\"type\":\"function\",\"function\":{\"name\":...}}");
  }
  throw std::invalid_argument("tool_choice: expected a string or an object");
}

nlohmann::json ToolChoice::to_json() const {
  switch (mode) {
    case Mode::automatic:
      return "auto";
    case Mode::none:
      return "none";
    case Mode::required:
      return "required";
    case Mode::named:
      return {{"type", "function"}, {"function", {{"name", name}}}};
  }
  return "auto";
}

std::string_view to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::stop:
      return "stop";
    case FinishReason::tool_calls:
      return "tool_calls";
    case FinishReason::length:
      return "length";
    case FinishReason::cancelled:
      return "cancelled";
    case FinishReason::error:
      return "error";
  }
  return "error";
}

Usage& Usage::operator+=(const Usage& other) {
  prompt_tokens += other.prompt_tokens;
  completion_tokens += other.completion_tokens;
  cached_prompt_tokens += other.cached_prompt_tokens;
  return *this;
}

}  // namespace agentrt
