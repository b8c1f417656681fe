#include "tools/mcp_client.h"

#include <gtest/gtest.h>

namespace agentrt::tools {
namespace {

McpServerConfig test_server() {
  McpServerConfig c;
  c.command = {"python3", std::string(AGENTRT_SOURCE_DIR) + "/tests/tools/mcp_test_server.py"};
  c.prefix = "t";
  c.call_timeout = std::chrono::milliseconds(1500);
  return c;
}

bool have_python() { return std::system("python3 -c 1 >/dev/null 2>&1") == 0; }

TEST(McpClient, ListsEveryPageAndCallsThroughTheRegistry) {
  if (!have_python()) GTEST_SKIP() << "python3 not installed";
  ToolRegistry registry;
  auto client = register_mcp_tools(registry, test_server());
  EXPECT_EQ(registry.specs().size(), 6u);  // three pages of two
  EXPECT_TRUE(registry.contains("t__echo"));
  EXPECT_EQ(client->server_info()["name"], "test");
  ToolContext ctx;
  const auto echo = registry.call("t__echo", nlohmann::json{{"text", "héllo"}}, ctx);
  EXPECT_TRUE(echo.ok);
  EXPECT_EQ(echo.content, "héllo");
  const auto add = registry.call("t__add", nlohmann::json{{"a", 2}, {"b", 40}}, ctx);
  EXPECT_EQ(add.content, "42");
  EXPECT_EQ((*add.data)["sum"], 42);
  // Arguments are validated against the server's inputSchema before the call.
  EXPECT_EQ(registry.call("t__add", nlohmann::json{{"a", "x"}}, ctx).error_kind, "validation");
  const auto fail = registry.call("t__fail", nlohmann::json::object(), ctx);
  EXPECT_FALSE(fail.ok);
  EXPECT_EQ(fail.content, "it failed");
}

TEST(McpClient, CrashHangAndGarbageAreRestartedOnceThenClearErrors) {
  if (!have_python()) GTEST_SKIP() << "python3 not installed";
  ToolRegistry registry;
  auto client = register_mcp_tools(registry, test_server());
  ToolContext ctx;
  const auto crash = registry.call("t__crash", nlohmann::json::object(), ctx);
  EXPECT_FALSE(crash.ok);
  EXPECT_NE(crash.content.find("exited"), std::string::npos) << crash.content;
  const auto hang = registry.call("t__hang", nlohmann::json::object(), ctx);
  EXPECT_EQ(hang.error_kind, "timeout") << hang.content;
  const auto garbage = registry.call("t__garbage", nlohmann::json::object(), ctx);
  EXPECT_NE(garbage.content.find("malformed"), std::string::npos) << garbage.content;
  EXPECT_GE(client->restarts(), 3);
  // The server still works after the restarts.
  EXPECT_EQ(registry.call("t__echo", nlohmann::json{{"text", "back"}}, ctx).content, "back");
}

TEST(McpClient, AMissingServerIsAClearError) {
  McpServerConfig c;
  c.command = {"/nonexistent/mcp-server"};
  c.startup_timeout = std::chrono::milliseconds(1000);
  try {
    McpClient client(c);
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("exited"), std::string::npos) << e.what();
  }
}

// A server that closes its input: the client's write may meet the closed pipe (a broken pipe,
// which must not raise SIGPIPE and end the process; CI once lost the test binary to that race
// with a server that failed to start) or land first and get no answer. Either way it is a clear
// error naming the server.
TEST(McpClient, AServerThatClosedItsInputIsAClearErrorNotASignal) {
  McpServerConfig c;
  c.command = {"/bin/sh", "-c", "exec 0<&-; sleep 1"};
  c.startup_timeout = std::chrono::milliseconds(300);
  for (int i = 0; i < 3; ++i) {
    try {
      McpClient client(c);
      FAIL();
    } catch (const std::exception& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("MCP server /bin/sh"), std::string::npos) << what;
      EXPECT_TRUE(what.find("closed its input") != std::string::npos ||
                  what.find("did not answer") != std::string::npos)
          << what;
    }
  }
}

}  // namespace
}  // namespace agentrt::tools
