// `agentrt tools list [--mcp CMD]...` prints the tool schemas as JSON (MCP servers' tools under
// the prefixes mcp0__, mcp1__, ...);
// `agentrt tools call NAME --args JSON [--workspace DIR] [--network] [--allow-host H]...` runs one
// call and prints the result JSON (exit 0 when the tool succeeded, 1 when it reported an error).
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "cli/commands.h"
#include "tools/mcp_client.h"
#include "tools/registry.h"

namespace agentrt::cli {

int cmd_tools(const Args& args) {
  if (args.empty())
    throw std::invalid_argument(
        "usage: agentrt tools list | agentrt tools call NAME --args JSON [--workspace DIR]");
  tools::ToolRegistry registry;
  tools::register_builtin_tools(registry);
  std::vector<std::shared_ptr<tools::McpClient>> servers;
  const auto add_mcp = [&](const std::string& command, size_t n) {
    tools::McpServerConfig config;
    std::istringstream words(command);
    for (std::string w; words >> w;) config.command.push_back(w);
    config.prefix = "mcp" + std::to_string(n);
    servers.push_back(tools::register_mcp_tools(registry, config));
  };
  if (args[0] == "list") {
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--mcp" && i + 1 < args.size()) {
        add_mcp(args[++i], servers.size());
        continue;
      }
      throw std::invalid_argument("tools list: unknown argument '" + args[i] + "'");
    }
    std::cout << registry.openai_tools().dump(2) << "\n";
    return 0;
  }
  if (args[0] != "call" || args.size() < 2)
    throw std::invalid_argument("usage: agentrt tools call NAME --args JSON [--workspace DIR]");
  tools::ToolContext context;
  context.workspace = std::filesystem::current_path();
  nlohmann::json arguments = nlohmann::json::object();
  for (size_t i = 2; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--args") {
      try {
        arguments = nlohmann::json::parse(value());
      } catch (const nlohmann::json::exception& e) {
        throw std::invalid_argument(std::string("--args is not valid JSON: ") + e.what());
      }
    } else if (a == "--workspace") {
      context.workspace = std::filesystem::absolute(value());
    } else if (a == "--network") {
      context.network = true;
    } else if (a == "--allow-host") {
      context.http_allow_hosts.push_back(value());
    } else if (a == "--mcp") {
      add_mcp(value(), servers.size());
    } else if (a == "--allow-private") {
      context.http_allow_private = true;
    } else {
      throw std::invalid_argument("tools call: unknown argument '" + a + "'");
    }
  }
  const auto result = registry.call(args[1], arguments, context);
  std::cout << result.to_json().dump(2) << "\n";
  return result.ok ? 0 : 1;
}

}  // namespace agentrt::cli
