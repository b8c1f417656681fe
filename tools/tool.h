// A tool as the model sees it (name, description, JSON-Schema parameters; the OpenAI function
// format) and what a call returns: ok/error, text content, optional JSON, truncation, timing.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace agentrt::tools {

struct ToolSpec {
  std::string name;
  std::string description;
  nlohmann::ordered_json parameters =
      nlohmann::ordered_json{{"type", "object"}, {"properties", nlohmann::ordered_json::object()}};

  nlohmann::ordered_json to_openai() const;  // {"type":"function","function":{...}}
  // Accepts {"type":"function","function":{...}} or the bare function object; throws naming
  // the missing field.
  static ToolSpec from_openai(const nlohmann::ordered_json& value);
};

struct ToolResult {
  bool ok = true;
  std::string content;                 // what the model reads
  std::optional<nlohmann::json> data;  // structured result, if any
  bool truncated = false;              // content was cut at the cap (a marker says so)
  double duration_seconds = 0;
  std::string error_kind;  // "", "validation", "timeout", "cancelled", "execution", "not_found"

  static ToolResult error(std::string kind, std::string message);
  nlohmann::json to_json() const;
};

// What a call may touch and how long it may take.
struct ToolContext {
  std::filesystem::path workspace;  // all paths are confined here
  bool network = false;             // sandboxed processes get a network namespace without it
  std::vector<std::string> http_allow_hosts;
  bool http_allow_private = false;  // loopback / private ranges for http_get
  sandbox::Limits limits;
  std::chrono::milliseconds timeout{30000};
  size_t result_cap = 64 * 1024;
  const std::atomic<bool>* cancel = nullptr;
};

using ToolFunction = std::function<ToolResult(const nlohmann::json& arguments, const ToolContext&)>;

// Cuts `text` to `cap` bytes (at a UTF-8 boundary) and appends an explicit marker.
std::string cap_text(std::string text, size_t cap, bool* truncated);

}  // namespace agentrt::tools
