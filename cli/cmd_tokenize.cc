#include <cstdio>

#include "cli/commands.h"

namespace agentrt::cli {

int cmd_tokenize(const Args&) {
  std::fprintf(stderr, "agentrt tokenize: not implemented yet\n");
  return 2;
}

int cmd_detokenize(const Args&) {
  std::fprintf(stderr, "agentrt detokenize: not implemented yet\n");
  return 2;
}

}  // namespace agentrt::cli
