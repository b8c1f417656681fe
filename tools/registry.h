// The tool registry: specs in registration order, each with its callable. call() validates the
// arguments against the schema first (a failure is a tool error naming the bad field, which the
// model reads), runs the tool, caps its output with an explicit marker and times it. Tools never
// throw through call(): every failure is a ToolResult the model can react to.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "tools/tool.h"

namespace agentrt::tools {

class ToolRegistry {
 public:
  // Throws std::invalid_argument on a duplicate name or a parameters schema that is not an object.
  void add(ToolSpec spec, ToolFunction fn);
  bool contains(std::string_view name) const;
  const ToolSpec* find(std::string_view name) const;
  std::vector<ToolSpec> specs() const;
  nlohmann::ordered_json openai_tools() const;
  ToolResult call(std::string_view name, const nlohmann::json& arguments,
                  const ToolContext& context) const;
  // A registry with this one's tools plus others (session-local tools); entries are shared.
  std::shared_ptr<ToolRegistry> extended() const;

 private:
  struct Entry {
    ToolSpec spec;
    ToolFunction fn;
  };
  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<const Entry>> entries_;
};

// Registers the built-in tools by name (empty list: all): shell, python, read_file, write_file,
// edit_file, list_dir, search_files, http_get. Throws naming an unknown built-in.
void register_builtin_tools(ToolRegistry& registry, const std::vector<std::string>& names = {});
std::vector<std::string> builtin_tool_names();

}  // namespace agentrt::tools
