// `agentrt sandbox run [--workspace DIR] [--timeout SEC] [--memory MB] [--network] [--ro PATH]...
//  [--rw PATH]... -- CMD ARGS...`: exit status is the command's, 124 on timeout, 137 when killed
// for a limit, with a line on stderr saying why when the sandbox ended it.
// `agentrt sandbox doctor`: which isolation layers work on this machine.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "sandbox/sandbox.h"

namespace agentrt::cli {

namespace {

int sandbox_doctor() {
  int active = 0;
  const auto layers = sandbox::probe_layers();
  for (const auto& l : layers) {
    std::printf("%-22s %-8s %s\n", std::string(sandbox::to_string(l.layer)).c_str(),
                l.active ? "active" : "MISSING", l.detail.c_str());
    active += l.active;
  }
  std::printf("%d of %zu layers available\n", active, layers.size());
  return 0;
}

int sandbox_run(const Args& args) {
  sandbox::SandboxConfig config;
  config.passthrough_output = true;
  size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--") {
      ++i;
      break;
    }
    if (a == "--workspace")
      config.workspace = value();
    else if (a == "--timeout")
      config.limits.wall_seconds = std::stod(value());
    else if (a == "--memory")
      config.limits.memory_bytes = static_cast<uint64_t>(std::stod(value()) * (1 << 20));
    else if (a == "--network")
      config.network = true;
    else if (a == "--ro")
      config.binds.push_back({value(), args[i], false});
    else if (a == "--rw")
      config.binds.push_back({value(), args[i], true});
    else if (a == "--require")
      config.required_layers.push_back(sandbox::parse_layer(value()));
    else
      throw std::invalid_argument("sandbox run: unknown argument '" + a +
                                  "' (the command goes after --)");
  }
  for (; i < args.size(); ++i) config.argv.push_back(args[i]);
  if (config.argv.empty())
    throw std::invalid_argument(
        "sandbox run: no command (usage: agentrt sandbox run [flags] -- CMD ARGS...)");
  for (auto& b : config.binds) b.inside = std::filesystem::absolute(b.host);
  if (!config.workspace.empty()) config.workspace = std::filesystem::absolute(config.workspace);
  const auto result = sandbox::run(config);
  if (result.timed_out) {
    std::fprintf(stderr, "agentrt sandbox: %s\n", result.message.c_str());
    return 124;
  }
  if (result.limit != sandbox::LimitHit::none) {
    std::fprintf(stderr, "agentrt sandbox: %s (limit: %s)\n", result.message.c_str(),
                 std::string(sandbox::to_string(result.limit)).c_str());
    return 137;
  }
  if (result.signal) return 128 + result.signal;
  return result.exit_code;
}

}  // namespace

int cmd_sandbox(const Args& args) {
  if (!args.empty() && args[0] == "doctor") return sandbox_doctor();
  if (!args.empty() && args[0] == "run") return sandbox_run(Args(args.begin() + 1, args.end()));
  throw std::invalid_argument(
      "usage: agentrt sandbox run [--workspace DIR] [--timeout SEC] [--memory MB] [--network] "
      "[--ro PATH]... [--rw PATH]... -- CMD ARGS... | agentrt sandbox doctor");
}

}  // namespace agentrt::cli
