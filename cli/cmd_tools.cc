#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_tools(const Args&) {
  std::fprintf(stderr, "agentrt tools: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
