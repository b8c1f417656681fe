#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tools/registry.h"
#include "tools/workspace_paths.h"

namespace agentrt::tools {
namespace {

namespace fs = std::filesystem;

class ToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ws_ = fs::temp_directory_path() / ("agentrt-tools-" + std::to_string(::getpid()) + "-" +
                                       std::to_string(std::random_device{}()));
    fs::create_directories(ws_ / "sub");
    std::ofstream(ws_ / "a.txt") << "line one\nline two\nline three\n";
    std::ofstream(ws_ / "sub" / "b.txt") << "needle here\nnothing\n";
    register_builtin_tools(registry_);
    ctx_.workspace = ws_;
    ctx_.timeout = std::chrono::milliseconds(10000);
  }
  void TearDown() override { fs::remove_all(ws_); }
  ToolResult call(const std::string& name, const std::string& args) {
    return registry_.call(name, nlohmann::json::parse(args), ctx_);
  }
  fs::path ws_;
  ToolRegistry registry_;
  ToolContext ctx_;
};

TEST_F(ToolsTest, RegistryListsBuiltinsInOpenAiFormat) {
  const auto tools = registry_.openai_tools();
  ASSERT_GE(tools.size(), 7u);
  EXPECT_EQ(tools[0]["type"], "function");
  EXPECT_TRUE(tools[0]["function"].contains("parameters"));
  EXPECT_THROW(registry_.add({"shell", "dup", {}}, nullptr), std::invalid_argument);
  EXPECT_EQ(call("nope", "{}").error_kind, "not_found");
}

TEST_F(ToolsTest, ValidationFailureNamesTheField) {
  const auto r = call("read_file", R"({"path": 3})");
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error_kind, "validation");
  EXPECT_NE(r.content.find("arguments/path"), std::string::npos) << r.content;
  const auto missing = call("write_file", R"({"path": "x"})");
  EXPECT_NE(missing.content.find("arguments/content: required property missing"), std::string::npos)
      << missing.content;
}

TEST_F(ToolsTest, ReadWriteEditListSearch) {
  EXPECT_EQ(call("read_file", R"({"path": "a.txt", "offset": 2, "limit": 1})").content,
            "line two\n");
  EXPECT_TRUE(call("write_file", R"({"path": "new/c.txt", "content": "x = 1\nx = 1\n"})").ok);
  const auto ambiguous =
      call("edit_file", R"({"path": "new/c.txt", "old_string": "x = 1", "new_string": "y"})");
  EXPECT_FALSE(ambiguous.ok);
  EXPECT_NE(ambiguous.content.find("more than once"), std::string::npos);
  EXPECT_TRUE(
      call("edit_file", R"({"path": "a.txt", "old_string": "line two", "new_string": "LINE 2"})")
          .ok);
  EXPECT_EQ(call("read_file", R"({"path": "a.txt", "offset": 2, "limit": 1})").content, "LINE 2\n");
  EXPECT_EQ(call("list_dir", "{}").content, "a.txt\nnew/\nsub/\n");
  EXPECT_EQ(call("search_files", R"({"pattern": "need+le"})").content,
            "sub/b.txt:1: needle here\n");
  EXPECT_FALSE(call("search_files", R"({"pattern": "("})").ok);
}

TEST_F(ToolsTest, PathsAreConfinedToTheWorkspace) {
  fs::create_symlink("/etc", ws_ / "etc_link");
  for (const char* bad : {R"({"path": "/etc/passwd"})", R"({"path": "../x"})",
                          R"({"path": "sub/../../x"})", R"({"path": "etc_link/passwd"})"}) {
    const auto r = call("read_file", bad);
    EXPECT_FALSE(r.ok) << bad;
  }
  EXPECT_FALSE(call("write_file", R"({"path": "etc_link/evil", "content": "x"})").ok);
  EXPECT_FALSE(fs::exists("/etc/evil"));
}

TEST_F(ToolsTest, ResultsAreCappedWithAMarker) {
  ctx_.result_cap = 10;
  const auto r = call("read_file", R"({"path": "a.txt"})");
  EXPECT_TRUE(r.truncated);
  EXPECT_NE(r.content.find("[... truncated"), std::string::npos);
}

TEST_F(ToolsTest, ShellRunsInTheSandboxWithLimits) {
  const auto r = call("shell", R"({"command": "cat a.txt | wc -l; id -u"})");
  EXPECT_TRUE(r.ok) << r.content;
  EXPECT_EQ(r.content, "3\n1000\n");
  const auto failing = call("shell", R"({"command": "echo oops >&2; exit 3"})");
  EXPECT_FALSE(failing.ok);
  EXPECT_NE(failing.content.find("[exit code 3]"), std::string::npos);
  ctx_.timeout = std::chrono::milliseconds(500);
  const auto slow = call("shell", R"({"command": "sleep 20"})");
  EXPECT_EQ(slow.error_kind, "timeout");
  EXPECT_LT(slow.duration_seconds, 3);
  const auto outside = call("shell", R"({"command": "cat /etc/shadow"})");
  EXPECT_FALSE(outside.ok);
}

TEST_F(ToolsTest, PythonToolRunsScripts) {
  if (!registry_.contains("python")) GTEST_SKIP() << "python3 not installed";
  const auto r = call("python", R"j({"code": "import os; print(sum(range(10)), os.getcwd())"})j");
  EXPECT_EQ(r.content, "45 /workspace\n") << r.content;
}

TEST_F(ToolsTest, HttpGetRefusesHostsOutsideTheAllowListAndPrivateAddresses) {
  EXPECT_NE(call("http_get", R"({"url": "http://example.com/"})").content.find("allow-list"),
            std::string::npos);
  ctx_.http_allow_hosts = {"127.0.0.1"};
  const auto r = call("http_get", R"({"url": "http://127.0.0.1:9/"})");
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.content.find("private or loopback"), std::string::npos) << r.content;
  EXPECT_FALSE(call("http_get", R"({"url": "file:///etc/passwd"})").ok);
}

TEST_F(ToolsTest, CancellationStopsACall) {
  std::atomic<bool> cancel{true};
  ctx_.cancel = &cancel;
  EXPECT_EQ(call("shell", R"({"command": "sleep 5"})").error_kind, "cancelled");
}

}  // namespace
}  // namespace agentrt::tools

namespace agentrt::tools {
namespace {

// A one-shot HTTP server on 127.0.0.1 (only loopback is ever used by tests).
struct OneShotServer {
  int fd = -1, port = 0;
  std::thread thread;
  explicit OneShotServer(std::string response) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(fd, 1);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
    thread = std::thread([this, response] {
      const int c = ::accept(fd, nullptr, nullptr);
      if (c < 0) return;
      char buf[4096];
      (void)!::read(c, buf, sizeof buf);
      (void)!::write(c, response.data(), response.size());
      ::close(c);
    });
  }
  ~OneShotServer() {
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
    thread.join();
  }
};

TEST_F(ToolsTest, HttpGetFetchesFromAnAllowedPrivateHostWhenExplicitlyAllowed) {
  OneShotServer server("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from loopback");
  ctx_.http_allow_hosts = {"127.0.0.1"};
  ctx_.http_allow_private = true;
  const auto r = call("http_get", R"({"url": "http://127.0.0.1:)" + std::to_string(server.port) +
                                      R"(/x", "max_bytes": 10})");
  EXPECT_TRUE(r.ok) << r.content;
  EXPECT_TRUE(r.truncated);
  EXPECT_EQ(r.content.substr(0, 10), "hello from");
}

}  // namespace
}  // namespace agentrt::tools
