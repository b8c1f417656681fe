#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_serve(const Args&) {
  std::fprintf(stderr, "agentrt serve: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
