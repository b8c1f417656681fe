#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_model(const Args&) {
  std::fprintf(stderr, "agentrt model: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
