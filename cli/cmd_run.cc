#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_run(const Args&) {
  std::fprintf(stderr, "agentrt run: not implemented yet\n");
  return 2;
}

int cmd_chat(const Args&) {
  std::fprintf(stderr, "agentrt chat: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
