#include "tools/tool.h"

#include <stdexcept>

namespace agentrt::tools {

nlohmann::ordered_json ToolSpec::to_openai() const {
  return {{"type", "function"},
          {"function", {{"name", name}, {"description", description}, {"parameters", parameters}}}};
}

ToolSpec ToolSpec::from_openai(const nlohmann::ordered_json& value) {
  const nlohmann::ordered_json& fn = value.contains("function") ? value["function"] : value;
  if (!fn.is_object()) throw std::invalid_argument("tool: expected an object with a 'function'");
  if (!fn.contains("name") || !fn["name"].is_string() || fn["name"].get<std::string>().empty()) {
    throw std::invalid_argument("tool: 'name' missing or not a non-empty string");
  }
  ToolSpec spec;
  spec.name = fn["name"].get<std::string>();
  if (fn.contains("description") && fn["description"].is_string())
    spec.description = fn["description"];
  if (fn.contains("parameters") && !fn["parameters"].is_null()) {
    if (!fn["parameters"].is_object())
      throw std::invalid_argument("tool '" + spec.name + "': 'parameters' must be an object");
    spec.parameters = fn["parameters"];
  }
  return spec;
}

ToolResult ToolResult::error(std::string kind, std::string message) {
  ToolResult r;
  r.ok = false;
  r.error_kind = std::move(kind);
  r.content = std::move(message);
  return r;
}

nlohmann::json ToolResult::to_json() const {
  nlohmann::json j = {{"ok", ok},
                      {"content", content},
                      {"truncated", truncated},
                      {"duration_seconds", duration_seconds}};
  if (!ok) j["error"] = error_kind;
  if (data) j["data"] = *data;
  return j;
}

std::string cap_text(std::string text, size_t cap, bool* truncated) {
  if (text.size() <= cap) {
    if (truncated) *truncated = false;
    return text;
  }
  size_t cut = cap;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  const size_t dropped = text.size() - cut;
  text.resize(cut);
  text += "\n[... truncated: " + std::to_string(dropped) + " more bytes not shown]";
  if (truncated) *truncated = true;
  return text;
}

}  // namespace agentrt::tools
