// A grammar: parsed from GBNF-style EBNF (with /regex/ terminals) or from a regular expression,
// then immutable. Compile it against a tokenizer with compile() (compiled_grammar.h).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "grammars/grammar_ast.h"

namespace agentrt::grammars {

// A grammar that could not be parsed or normalised; the message names line:column (EBNF),
// the pattern offset (regex) or the rule.
class GrammarError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Grammar {
 public:
  // GBNF dialect: `name ::= alternatives`, "literals", [classes], ., ( ), * + ? {m} {m,} {m,n},
  // # comments, and /regex/ terminals (whole-string match of an ECMAScript-subset regex).
  static Grammar from_ebnf(std::string_view text, std::string_view root_rule = "root");
  // ECMAScript subset; the grammar matches whole strings (^ and $ at the ends are accepted).
  static Grammar from_regex(std::string_view pattern);
  // Builds from rules directly (rule references index `rules`); validates references.
  static Grammar from_rules(std::vector<GrammarRule> rules, int32_t root);

  // GBNF text that from_ebnf parses back to an equivalent grammar.
  std::string to_ebnf() const;

  const std::vector<GrammarRule>& rules() const { return rules_; }
  int32_t root() const { return root_; }

 private:
  std::vector<GrammarRule> rules_;
  int32_t root_ = 0;
};

}  // namespace agentrt::grammars
