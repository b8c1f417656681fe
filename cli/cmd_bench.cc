#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_bench(const Args&) {
  std::fprintf(stderr, "agentrt bench: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
