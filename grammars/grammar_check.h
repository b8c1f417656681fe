// Whole-text validation against a grammar, byte by byte, reporting where and why it fails
// (`agentrt grammar check`).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "grammars/grammar.h"

namespace agentrt::grammars {

struct CheckResult {
  bool accepted = false;
  size_t byte = 0;     // offset of the first byte the grammar rejects, or the text size
  std::string reason;  // empty when accepted
};

CheckResult check_text(const Grammar& grammar, std::string_view text);

}  // namespace agentrt::grammars
