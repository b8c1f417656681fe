#include "tools/mcp_client.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace agentrt::tools {

namespace {

using Clock = std::chrono::steady_clock;

class McpError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace

McpClient::McpClient(McpServerConfig config) : config_(std::move(config)) {
  if (config_.command.empty()) throw std::invalid_argument("MCP server: empty command");
  std::lock_guard lock(mutex_);
  start();
}

McpClient::~McpClient() { stop(); }

void McpClient::start() {
  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0)
    throw McpError("MCP: pipe failed");
  pid_ = ::fork();
  if (pid_ < 0) throw McpError("MCP: fork failed");
  if (pid_ == 0) {
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    std::vector<char*> argv;
    for (const auto& a : config_.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    dprintf(2, "cannot start MCP server %s: %s\n", argv[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  to_server_ = in_pipe[1];
  from_server_ = out_pipe[0];
  buffer_.clear();
  const nlohmann::json init = request("initialize",
                                      {{"protocolVersion", "2025-06-18"},
                                       {"capabilities", nlohmann::json::object()},
                                       {"clientInfo", {{"name", "agentrt"}, {"version", "0.1.0"}}}},
                                      config_.startup_timeout);
  server_info_ = init.value("serverInfo", nlohmann::json::object());
  send({{"jsonrpc", "2.0"}, {"method", "notifications/initialized"}});
}

void McpClient::stop() {
  if (to_server_ >= 0) ::close(to_server_);
  if (from_server_ >= 0) ::close(from_server_);
  to_server_ = from_server_ = -1;
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_ = -1;
}

void McpClient::send(const nlohmann::json& message) {
  const std::string line =
      message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  // Writing to a server that has exited raises SIGPIPE, which would end the whole process: it is
  // blocked on this thread for the writes, and the one a closed pipe raised is discarded.
  sigset_t pipe_signal, previous;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, &previous);
  size_t off = 0;
  int error = 0;
  while (off < line.size()) {
    const ssize_t n = ::write(to_server_, line.data() + off, line.size() - off);
    if (n <= 0) {
      error = n < 0 ? errno : EIO;
      if (error == EINTR) continue;
      break;
    }
    off += static_cast<size_t>(n);
  }
  if (error == EPIPE) {
    const timespec now{0, 0};
    sigtimedwait(&pipe_signal, nullptr, &now);
  }
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  if (error == EPIPE)
    throw McpError("MCP server " + config_.command[0] + " exited or closed its input");
  if (error != 0)
    throw McpError("MCP server " + config_.command[0] + ": write failed: " + std::strerror(error));
}

nlohmann::json McpClient::read_response(int64_t id, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    for (size_t nl; (nl = buffer_.find('\n')) != std::string::npos;) {
      const std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
      const auto msg = nlohmann::json::parse(line, nullptr, false);
      if (msg.is_discarded() || !msg.is_object())
        throw McpError("MCP server sent a malformed message: '" + line.substr(0, 120) + "'");
      if (!msg.contains("id") || msg["id"] != id) continue;  // notifications and stray replies
      if (msg.contains("error")) {
        throw std::runtime_error("MCP error " + msg["error"].value("message", msg["error"].dump()));
      }
      if (!msg.contains("result")) throw McpError("MCP response without a result");
      return msg["result"];
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0)
      throw McpError("MCP server " + config_.command[0] + " did not answer within " +
                     std::to_string(timeout.count()) + " ms");
    pollfd p{from_server_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[65536];
    const ssize_t n = ::read(from_server_, buf, sizeof buf);
    if (n <= 0) throw McpError("MCP server " + config_.command[0] + " exited");
    buffer_.append(buf, n);
    if (buffer_.size() > (64u << 20)) throw McpError("MCP message larger than 64 MiB");
  }
}

nlohmann::json McpClient::request(const std::string& method, const nlohmann::json& params,
                                  std::chrono::milliseconds timeout) {
  const int64_t id = next_id_++;
  send({{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", params}});
  return read_response(id, timeout);
}

std::vector<nlohmann::json> McpClient::list_tools() {
  std::lock_guard lock(mutex_);
  std::vector<nlohmann::json> tools;
  nlohmann::json params = nlohmann::json::object();
  for (int page = 0; page < 1000; ++page) {
    const auto result = request("tools/list", params, config_.call_timeout);
    for (const auto& t : result.value("tools", nlohmann::json::array())) tools.push_back(t);
    if (!result.contains("nextCursor") || result["nextCursor"].is_null()) break;
    params["cursor"] = result["nextCursor"];
  }
  return tools;
}

ToolResult McpClient::call_tool(const std::string& name, const nlohmann::json& arguments,
                                std::chrono::milliseconds timeout) {
  std::lock_guard lock(mutex_);
  for (int attempt = 0;; ++attempt) {
    try {
      const auto result =
          request("tools/call", {{"name", name}, {"arguments", arguments}}, timeout);
      ToolResult r;
      r.ok = !result.value("isError", false);
      if (!r.ok) r.error_kind = "execution";
      for (const auto& c : result.value("content", nlohmann::json::array())) {
        if (!r.content.empty()) r.content += "\n";
        const std::string type = c.value("type", "");
        if (type == "text")
          r.content += c.value("text", "");
        else if (type == "json" || type == "resource")
          r.content += c.dump();
        else
          r.content += "[" + type + " content]";
      }
      if (result.contains("structuredContent")) r.data = result["structuredContent"];
      return r;
    } catch (const McpError& e) {
      // Crashed, hung or garbled: restart once, then give up with the reason.
      stop();
      if (attempt >= 1)
        return ToolResult::error(std::string(e.what()).find("did not answer") != std::string::npos
                                     ? "timeout"
                                     : "execution",
                                 e.what());
      try {
        ++restarts_;
        start();
      } catch (const std::exception& e2) {
        return ToolResult::error("execution",
                                 std::string("MCP server restart failed: ") + e2.what());
      }
    } catch (const std::exception& e) {
      return ToolResult::error("execution", e.what());
    }
  }
}

std::shared_ptr<McpClient> register_mcp_tools(ToolRegistry& registry,
                                              const McpServerConfig& config) {
  auto client = std::make_shared<McpClient>(config);
  for (const auto& t : client->list_tools()) {
    if (!t.contains("name") || !t["name"].is_string()) continue;
    ToolSpec spec;
    const std::string remote_name = t["name"];
    spec.name = config.prefix.empty() ? remote_name : config.prefix + "__" + remote_name;
    spec.description = t.value("description", "");
    if (t.contains("inputSchema") && t["inputSchema"].is_object())
      spec.parameters = nlohmann::ordered_json::parse(t["inputSchema"].dump());
    const auto timeout = config.call_timeout;
    registry.add(
        spec, [client, remote_name, timeout](const nlohmann::json& args, const ToolContext& ctx) {
          return client->call_tool(remote_name, args, std::min(timeout, ctx.timeout));
        });
  }
  return client;
}

}  // namespace agentrt::tools
