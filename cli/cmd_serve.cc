// `agentrt serve [--host 127.0.0.1] [--port 8080] [--model DIR | --remote URL] [--api-keys FILE]
//  [--max-sessions N] [--workspace DIR] [--origin O]...`: OpenAI-compatible HTTP and WebSocket
// sessions; a line per request/session event on stderr; SIGINT/SIGTERM stop it cleanly.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include "cli/commands.h"
#include "runtime/backend_factory.h"
#include "runtime/server/server.h"
#include "tools/registry.h"

namespace agentrt::cli {

int cmd_serve(const Args& args) {
  server::ServerOptions options;
  BackendConfig backend;
  AgentOptions defaults;
  defaults.tool_context.workspace = std::filesystem::current_path() / "workspace";
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--host")
      options.host = value();
    else if (a == "--port")
      options.port = static_cast<uint16_t>(std::stoi(value()));
    else if (a == "--model") {
      backend.kind = "native";
      backend.model_path = value();
    } else if (a == "--remote") {
      backend.kind = "remote";
      backend.url = value();
    } else if (a == "--api-keys") {
      std::ifstream in(value());
      if (!in) throw std::invalid_argument("cannot read API keys file " + args[i]);
      for (std::string line; std::getline(in, line);) {
        if (!line.empty() && line[0] != '#') options.api_keys.push_back(line);
      }
    } else if (a == "--max-sessions")
      options.max_sessions = std::stoul(value());
    else if (a == "--workspace")
      defaults.tool_context.workspace = std::filesystem::absolute(value());
    else if (a == "--origin")
      options.allowed_origins.push_back(value());
    else
      throw std::invalid_argument("serve: unknown argument '" + a + "'");
  }
  if (const char* keys = std::getenv("AGENTRT_API_KEYS"); keys && *keys) {
    std::string k;
    for (const char* p = keys;; ++p) {
      if (*p == ',' || *p == 0) {
        if (!k.empty()) options.api_keys.push_back(k);
        k.clear();
        if (!*p) break;
      } else {
        k += *p;
      }
    }
  }
  if (backend.kind == "native" && backend.model_path.empty())
    throw std::invalid_argument("serve: --model DIR or --remote URL is required");
  std::filesystem::create_directories(defaults.tool_context.workspace);
  auto builtins = std::make_shared<tools::ToolRegistry>();
  tools::register_builtin_tools(*builtins);
  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  server::Server server(make_backend(backend), builtins, defaults, options);
  const uint16_t port = server.start();
  std::fprintf(stderr, "agentrt serve: ready on http://%s:%u (ws://%s:%u/v1/sessions)\n",
               options.host.c_str(), port, options.host.c_str(), port);
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "agentrt serve: signal %d, stopping\n", sig);
  server.stop();
  return 0;
}

}  // namespace agentrt::cli
