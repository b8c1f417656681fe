#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_sandbox(const Args&) {
  std::fprintf(stderr, "agentrt sandbox: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
