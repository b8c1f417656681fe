// shell and python: commands run in the sandbox with the workspace mounted at /workspace;
// network off unless the context allows it.
#include <filesystem>

#include "tools/builtins.h"

namespace agentrt::tools {

namespace {

using ojson = nlohmann::ordered_json;

ToolResult run_sandboxed(std::vector<std::string> argv, const ToolContext& c,
                         std::string stdin_data = {}) {
  sandbox::SandboxConfig config;
  config.argv = std::move(argv);
  config.workspace = c.workspace;
  config.network = c.network;
  config.limits = c.limits;
  config.limits.wall_seconds = std::min<double>(
      c.limits.wall_seconds > 0 ? c.limits.wall_seconds : 1e9, c.timeout.count() / 1000.0);
  config.stdin_data = std::move(stdin_data);
  const auto r = sandbox::run(config, c.cancel);
  ToolResult out;
  out.ok = r.exit_code == 0 && !r.timed_out && r.limit == sandbox::LimitHit::none && r.signal == 0;
  out.content = r.stdout_data;
  if (!r.stderr_data.empty())
    out.content += (out.content.empty() ? "" : "\n") + std::string("[stderr]\n") + r.stderr_data;
  if (r.stdout_truncated || r.stderr_truncated) {
    out.truncated = true;
    out.content += "\n[... output truncated at the sandbox cap]";
  }
  if (r.timed_out)
    out.error_kind = "timeout";
  else if (r.message == "cancelled")
    out.error_kind = "cancelled";
  else if (!out.ok)
    out.error_kind = "execution";
  if (!r.message.empty()) out.content += "\n[sandbox: " + r.message + "]";
  if (r.signal)
    out.content += "\n[killed by signal " + std::to_string(r.signal) + "]";
  else if (r.exit_code != 0)
    out.content += "\n[exit code " + std::to_string(r.exit_code) + "]";
  out.data = r.to_json();
  out.data->erase("stdout");
  out.data->erase("stderr");
  return out;
}

}  // namespace

void register_process_tools(ToolRegistry& r, const std::vector<std::string>& names) {
  const auto want = [&](const char* n) {
    return names.empty() || std::find(names.begin(), names.end(), n) != names.end();
  };
  if (want("shell")) {
    r.add(
        {"shell",
         "Run a bash command in an isolated sandbox with the workspace as the current directory.",
         ojson::parse(
             R"({"type":"object","properties":{"command":{"type":"string","minLength":1}},"required":["command"]})")},
        [](const nlohmann::json& a, const ToolContext& c) {
          return run_sandboxed({"bash", "-c", a["command"].get<std::string>()}, c);
        });
  }
  if (want("python") && (std::filesystem::exists("/usr/bin/python3") ||
                         std::filesystem::exists("/usr/local/bin/python3"))) {
    r.add(
        {"python",
         "Run a Python 3 script in an isolated sandbox with the workspace as the current "
         "directory.",
         ojson::parse(
             R"({"type":"object","properties":{"code":{"type":"string","minLength":1}},"required":["code"]})")},
        [](const nlohmann::json& a, const ToolContext& c) {
          return run_sandboxed({"python3", "-"}, c, a["code"].get<std::string>());
        });
  }
}

std::vector<std::string> builtin_tool_names() {
  return {"shell",     "python",   "read_file",    "write_file",
          "edit_file", "list_dir", "search_files", "http_get"};
}

void register_builtin_tools(ToolRegistry& registry, const std::vector<std::string>& names) {
  const auto all = builtin_tool_names();
  for (const auto& n : names) {
    if (std::find(all.begin(), all.end(), n) == all.end())
      throw std::invalid_argument("unknown built-in tool '" + n + "'");
  }
  // Keep the caller's order when names are given.
  if (names.empty()) {
    register_process_tools(registry, {});
    register_file_tools(registry, {});
    register_http_tools(registry, {});
    return;
  }
  for (const auto& n : names) {
    register_process_tools(registry, {n});
    register_file_tools(registry, {n});
    register_http_tools(registry, {n});
  }
}

}  // namespace agentrt::tools
