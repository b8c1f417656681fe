// `agentrt serve [--host 127.0.0.1] [--port 8080] [--model DIR | --remote URL] [--api-keys FILE]
//  [--max-sessions N] [--workspace DIR] [--origin O]... [--max-requests-per-key N]
//  [--idle-timeout-ms MS] [--max-session-ms MS] [--shutdown-grace-ms MS] [--sessions-dir DIR]
//  [--tls-cert FILE --tls-key FILE] [--io-threads N] [--max-batch N]`: OpenAI-compatible HTTP
// and WebSocket sessions; a line per request/session event on stderr; SIGINT/SIGTERM let running
// turns finish (within the grace period), checkpoint the sessions and exit 0.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include "cli/commands.h"
#include "runtime/backend_factory.h"
#include "runtime/native_backend.h"
#include "runtime/server/server.h"
#include "tools/registry.h"

namespace agentrt::cli {

int cmd_serve(const Args& args) {
  server::ServerOptions options;
  BackendConfig backend;
  AgentOptions defaults;
  DecodeBatcherOptions batching;
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
    else if (a == "--max-requests-per-key")
      options.max_requests_per_key = std::stoul(value());
    else if (a == "--idle-timeout-ms")
      options.idle_timeout = std::chrono::milliseconds(std::stoll(value()));
    else if (a == "--max-session-ms")
      options.max_session_time = std::chrono::milliseconds(std::stoll(value()));
    else if (a == "--shutdown-grace-ms")
      options.shutdown_grace = std::chrono::milliseconds(std::stoll(value()));
    else if (a == "--sessions-dir")
      options.sessions_dir = std::filesystem::absolute(value());
    else if (a == "--tls-cert")
      options.tls_cert = value();
    else if (a == "--tls-key")
      options.tls_key = value();
    else if (a == "--io-threads")
      options.io_threads = std::stoul(value());
    else if (a == "--max-batch")
      batching.max_batch = std::stoul(value());
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
  // The native engine batches the decode steps of all sessions (continuous batching).
  std::shared_ptr<Backend> model_backend;
  if (backend.kind == "native") {
    NativeBackendOptions native;
    native.batching = batching;
    native.load.threads = backend.threads;
    if (backend.device == "cuda") native.load.device = engine::Device::cuda;
    model_backend = std::make_shared<NativeBackend>(backend.model_path, native);
  } else {
    model_backend = make_backend(backend);
  }
  server::Server server(model_backend, builtins, defaults, options);
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
