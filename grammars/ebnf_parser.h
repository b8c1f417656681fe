// GBNF-compatible EBNF text to grammar rules. A rule runs until the next `name ::=`, so rules may
// span lines freely (a superset of llama.cpp's GBNF, which loads unchanged).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "grammars/grammar_ast.h"

namespace agentrt::grammars {

struct ParsedEbnf {
  std::vector<GrammarRule> rules;
  int32_t root = -1;
};

// Throws GrammarError naming line:column for syntax errors and undefined or duplicate rules.
ParsedEbnf parse_ebnf(std::string_view text, std::string_view root_rule);

}  // namespace agentrt::grammars
