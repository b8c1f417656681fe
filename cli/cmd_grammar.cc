#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_grammar(const Args&) {
  std::fprintf(stderr, "agentrt grammar: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
