// Registration of the built-in tools, one file per family.
#pragma once

#include <string>
#include <vector>

#include "tools/registry.h"

namespace agentrt::tools {

void register_file_tools(ToolRegistry& registry, const std::vector<std::string>& names);
void register_process_tools(ToolRegistry& registry, const std::vector<std::string>& names);
void register_http_tools(ToolRegistry& registry, const std::vector<std::string>& names);

}  // namespace agentrt::tools
