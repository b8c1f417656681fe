#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_logits(const Args&) {
  std::fprintf(stderr, "agentrt logits: not implemented yet\n");
  return 2;
}

int cmd_generate(const Args&) {
  std::fprintf(stderr, "agentrt generate: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
