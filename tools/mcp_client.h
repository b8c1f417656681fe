// MCP client over the stdio transport: starts the server as a subprocess and speaks
// newline-delimited JSON-RPC 2.0 (initialize, notifications/initialized, tools/list with
// pagination, tools/call with text/json content and isError). A server that crashes or hangs
// is restarted once per failing call; after that the call fails with a clear error. Its tools
// join a ToolRegistry under a prefix ("prefix__name").
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tools/registry.h"

namespace agentrt::tools {

struct McpServerConfig {
  std::vector<std::string> command;  // argv
  std::string prefix;                // tools register as prefix + "__" + name
  std::chrono::milliseconds startup_timeout{10000};
  std::chrono::milliseconds call_timeout{30000};
};

class McpClient {
 public:
  explicit McpClient(
      McpServerConfig config);  // starts and initializes; throws with the server's stderr tail
  ~McpClient();
  McpClient(const McpClient&) = delete;
  McpClient& operator=(const McpClient&) = delete;

  std::vector<nlohmann::json> list_tools();  // every page
  ToolResult call_tool(const std::string& name, const nlohmann::json& arguments,
                       std::chrono::milliseconds timeout);
  const nlohmann::json& server_info() const { return server_info_; }
  int restarts() const { return restarts_; }

 private:
  void start();
  void stop();
  nlohmann::json request(const std::string& method, const nlohmann::json& params,
                         std::chrono::milliseconds timeout);
  void send(const nlohmann::json& message);
  nlohmann::json read_response(int64_t id, std::chrono::milliseconds timeout);

  McpServerConfig config_;
  std::mutex mutex_;
  pid_t pid_ = -1;
  int to_server_ = -1, from_server_ = -1;
  std::string buffer_;
  int64_t next_id_ = 1;
  int restarts_ = 0;
  nlohmann::json server_info_;
};

// Starts the server, lists its tools and registers them; the client lives as long as the tools.
std::shared_ptr<McpClient> register_mcp_tools(ToolRegistry& registry,
                                              const McpServerConfig& config);

}  // namespace agentrt::tools
