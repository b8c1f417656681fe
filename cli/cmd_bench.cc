// `agentrt bench toolcalls --model DIR [--unconstrained] [--tool-choice auto|required]
//  [--max-tokens N] [--limit N] [--seed S] FILE...`: prints per file and in total
// `valid N/M` (turns whose calls parse and validate) and `called N/M`.
#include <cstdio>
#include <stdexcept>

#include "cli/commands.h"
#include "runtime/native_backend.h"
#include "runtime/toolcall_bench.h"

namespace agentrt::cli {

int cmd_bench(const Args& args) {
  if (args.empty() || args[0] != "toolcalls") {
    throw std::invalid_argument(
        "usage: agentrt bench toolcalls --model DIR [--unconstrained] [--tool-choice "
        "auto|required] FILE...");
  }
  std::string model;
  ToolcallBenchOptions options;
  std::vector<std::filesystem::path> files;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--model")
      model = value();
    else if (a == "--unconstrained")
      options.constrained = false;
    else if (a == "--tool-choice") {
      const std::string c = value();
      if (c != "auto" && c != "required")
        throw std::invalid_argument("--tool-choice must be auto or required");
      options.tool_choice = ToolChoice::from_json(c);
    } else if (a == "--max-tokens")
      options.max_tokens = std::stoi(value());
    else if (a == "--limit")
      options.limit_per_file = std::stoi(value());
    else if (a == "--seed")
      options.seed = std::stoull(value());
    else if (a == "--no-bounds")
      options.bounds = {};
    else if (!a.empty() && a[0] == '-')
      throw std::invalid_argument("bench toolcalls: unknown flag '" + a + "'");
    else
      files.push_back(a);
  }
  if (model.empty() || files.empty())
    throw std::invalid_argument("bench toolcalls: --model DIR and at least one FILE are required");
  NativeBackend backend(model);
  std::printf("mode: %s, tool_choice %s\n",
              options.constrained ? "constrained (grammar)" : "unconstrained",
              options.tool_choice.mode == ToolChoice::Mode::required ? "required" : "auto");
  int entries = 0, valid = 0, called = 0;
  run_toolcall_bench(backend, files, options, [&](const ToolcallFileResult& r) {
    std::printf("%s: valid %d/%d called %d/%d (%.1f s%s)\n", r.file.c_str(), r.valid, r.entries,
                r.called, r.entries, r.seconds,
                r.errors ? (", " + std::to_string(r.errors) + " grammar errors").c_str() : "");
    std::fflush(stdout);
    entries += r.entries;
    valid += r.valid;
    called += r.called;
  });
  std::printf("total: valid %d/%d called %d/%d\n", valid, entries, called, entries);
  return 0;
}

}  // namespace agentrt::cli
