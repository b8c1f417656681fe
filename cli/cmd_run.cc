// `agentrt run WORKFLOW.yaml [--json] [--model DIR] [--remote URL]`: runs a scripted workflow,
// with progress on the terminal (steps, tool calls, tokens/s) or JSON Lines events (--json).
// `agentrt chat [--model DIR | --remote URL] [--tools a,b] [--workspace DIR]`: an interactive
// session reading user lines from stdin.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include "cli/commands.h"
#include "runtime/backend_factory.h"
#include "runtime/workflow.h"
#include "tools/registry.h"

namespace agentrt::cli {

namespace {

// Human-readable progress: streamed text, tool calls and results, a line per step.
class ProgressPrinter {
 public:
  void operator()(int step_index, const AgentEvent& e) {
    switch (e.kind) {
      case AgentEvent::Kind::text_delta:
        std::fputs(e.text.c_str(), stdout);
        std::fflush(stdout);
        break;
      case AgentEvent::Kind::tool_call_end:
        std::fprintf(stderr, "\n  [step %d.%d] call %s %s\n", step_index + 1, e.step,
                     e.name.c_str(),
                     e.data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
        break;
      case AgentEvent::Kind::tool_result: {
        const bool ok = e.data.value("ok", false);
        std::string preview = e.text.substr(0, 160);
        for (char& c : preview)
          if (c == '\n') c = ' ';
        std::fprintf(stderr, "  [step %d.%d] %s %s: %s\n", step_index + 1, e.step,
                     ok ? "result" : "error", e.name.c_str(), preview.c_str());
        break;
      }
      case AgentEvent::Kind::step: {
        const double seconds = e.data.value("seconds", 0.0);
        const int64_t tokens = e.data.value("completion_tokens", int64_t{0});
        std::fprintf(stderr, "  [step %d.%d] model turn: %lld tokens, %.1f tok/s, finish %s\n",
                     step_index + 1, e.step, static_cast<long long>(tokens),
                     seconds > 0 ? tokens / seconds : 0.0, e.data.value("finish", "").c_str());
        break;
      }
      case AgentEvent::Kind::error:
        std::fprintf(stderr, "  [step %d] error: %s\n", step_index + 1, e.text.c_str());
        break;
      default:
        break;
    }
  }
};

}  // namespace

int cmd_run(const Args& args) {
  std::string file;
  bool json = false;
  std::string model, remote;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--json")
      json = true;
    else if (a == "--model")
      model = value();
    else if (a == "--remote")
      remote = value();
    else if (!a.empty() && a[0] == '-')
      throw std::invalid_argument("run: unknown flag '" + a + "'");
    else if (file.empty())
      file = a;
    else
      throw std::invalid_argument("run: one workflow file at a time");
  }
  if (file.empty())
    throw std::invalid_argument(
        "usage: agentrt run WORKFLOW.yaml [--json] [--model DIR] [--remote URL]");
  Workflow w = load_workflow(file);
  if (!model.empty()) {
    w.backend.kind = "native";
    w.backend.model_path = std::filesystem::absolute(model);
  }
  if (!remote.empty()) {
    w.backend.kind = "remote";
    w.backend.url = remote;
  }
  if (!json)
    std::fprintf(stderr, "agentrt run %s: %zu step(s), backend %s\n", file.c_str(), w.steps.size(),
                 w.backend.kind.c_str());
  auto backend = make_backend(w.backend);
  ProgressPrinter progress;
  int current = -1;
  const auto result = run_workflow(w, backend, [&](int step, const AgentEvent& e) {
    if (json) {
      nlohmann::json j = to_json(e);
      j["workflow_step"] = step;
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n"
                << std::flush;
      return;
    }
    if (step != current) {
      current = step;
      std::fprintf(stderr, "step %d/%zu: %s\n", step + 1, w.steps.size(),
                   w.steps[step].prompt.substr(0, 100).c_str());
    }
    progress(step, e);
  });
  for (size_t i = 0; i < result.steps.size(); ++i) {
    const auto& r = result.steps[i];
    if (json) {
      std::cout << nlohmann::json{{"type", "step_result"},
                                  {"workflow_step", i},
                                  {"stop", std::string(to_string(r.stop))},
                                  {"final", r.final_text},
                                  {"steps", r.steps},
                                  {"tool_calls", r.tool_calls},
                                  {"error", r.error}}
                       .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
    } else {
      std::fprintf(stderr, "\nstep %zu: %s after %d model turn(s), %d tool call(s)%s%s\n", i + 1,
                   std::string(to_string(r.stop)).c_str(), r.steps, r.tool_calls,
                   r.error.empty() ? "" : ": ", r.error.c_str());
    }
  }
  if (w.final_output && !json)
    std::fprintf(stderr, "final answer written to %s\n", w.final_output->c_str());
  if (w.transcript && !json) std::fprintf(stderr, "transcript: %s\n", w.transcript->c_str());
  return result.ok ? 0 : 1;
}

int cmd_chat(const Args& args) {
  BackendConfig config;
  std::vector<std::string> tool_names;
  AgentOptions options;
  options.tool_context.workspace = std::filesystem::current_path();
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--model") {
      config.kind = "native";
      config.model_path = value();
    } else if (a == "--remote") {
      config.kind = "remote";
      config.url = value();
    } else if (a == "--tools") {
      std::stringstream s(value());
      for (std::string t; std::getline(s, t, ',');) tool_names.push_back(t);
    } else if (a == "--workspace") {
      options.tool_context.workspace = std::filesystem::absolute(value());
    } else if (a == "--system") {
      options.system_prompt = value();
    } else {
      throw std::invalid_argument("chat: unknown argument '" + a + "'");
    }
  }
  if (config.kind == "native" && config.model_path.empty())
    throw std::invalid_argument("usage: agentrt chat --model DIR | --remote URL [--tools a,b]");
  auto registry = std::make_shared<tools::ToolRegistry>();
  if (!tool_names.empty()) tools::register_builtin_tools(*registry, tool_names);
  Agent agent(make_backend(config), registry, options);
  auto session = agent.new_session();
  ProgressPrinter progress;
  std::string line;
  std::fprintf(stderr, "agentrt chat (session %s); end with Ctrl-D\n> ", session->id().c_str());
  while (std::getline(std::cin, line)) {
    if (line.empty()) {
      std::fprintf(stderr, "> ");
      continue;
    }
    const auto r = session->send(line, [&](const AgentEvent& e) { progress(0, e); });
    std::printf("\n");
    if (r.stop != StopReason::final_answer)
      std::fprintf(stderr, "[%s] %s\n", std::string(to_string(r.stop)).c_str(), r.error.c_str());
    std::fprintf(stderr, "> ");
  }
  return 0;
}

}  // namespace agentrt::cli
