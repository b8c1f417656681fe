// agentrt: one executable, many subcommands. This file only dispatches; each
// subcommand is a thin layer over the library (cmd_*.cc).
#include <cstdio>
#include <exception>
#include <string_view>

#include "cli/commands.h"

namespace {

struct Subcommand {
  std::string_view name;
  int (*run)(const agentrt::cli::Args&);
  std::string_view summary;
};

constexpr Subcommand kSubcommands[] = {
    {"tokenize", agentrt::cli::cmd_tokenize, "UTF-8 text on stdin -> JSON array of token ids"},
    {"detokenize", agentrt::cli::cmd_detokenize, "JSON array of token ids on stdin -> text"},
    {"logits", agentrt::cli::cmd_logits, "raw float32 logits of a token sequence"},
    {"generate", agentrt::cli::cmd_generate, "stream a completion from a local model"},
    {"model", agentrt::cli::cmd_model, "model init: write a random-weight V4 checkpoint"},
    {"grammar", agentrt::cli::cmd_grammar, "grammar check|bench: constrained-decoding grammars"},
    {"sandbox", agentrt::cli::cmd_sandbox, "sandbox run|doctor: isolated process execution"},
    {"tools", agentrt::cli::cmd_tools, "tools list|call: the tool registry"},
    {"run", agentrt::cli::cmd_run, "run a workflow file"},
    {"chat", agentrt::cli::cmd_chat, "interactive tool-calling session"},
    {"bench", agentrt::cli::cmd_bench, "bench toolcalls: BFCL tool-call validity"},
    {"serve", agentrt::cli::cmd_serve, "WebSocket sessions and OpenAI-compatible HTTP API"},
};

void print_help() {
  std::printf("usage: agentrt <subcommand> [args...]\n\nsubcommands:\n");
  std::printf("  %-11s %s\n", "help", "list the subcommands");
  for (const auto& sub : kSubcommands) {
    std::printf("  %-11s %.*s\n", std::string(sub.name).c_str(),
                static_cast<int>(sub.summary.size()), sub.summary.data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string_view(argv[1]) == "help" || std::string_view(argv[1]) == "--help" ||
      std::string_view(argv[1]) == "-h") {
    print_help();
    return argc < 2 ? 2 : 0;
  }
  const std::string_view name = argv[1];
  agentrt::cli::Args args(argv + 2, argv + argc);
  for (const auto& sub : kSubcommands) {
    if (sub.name != name) continue;
    try {
      return sub.run(args);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "agentrt %s: error: %s\n", argv[1], e.what());
      return 2;
    }
  }
  std::fprintf(stderr, "agentrt: unknown subcommand '%s' (try 'agentrt help')\n", argv[1]);
  return 2;
}
