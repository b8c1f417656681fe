// ECMAScript-subset regular expressions (the dialect of JSON Schema `pattern`) to an Expr that
// matches whole strings. Supported: alternation, groups (capturing, (?:...), (?<name>...)),
// classes with ranges and \d \w \s \D \W \S, escapes (\n \t \xHH \uHHHH \u{H...} \cX ...),
// `.`, quantifiers * + ? {m} {m,} {m,n} (lazy forms treated as greedy), ^ at the start and $ at
// the end. Lookarounds, backreferences and word boundaries throw GrammarError.
#pragma once

#include <string_view>

#include "grammars/grammar_ast.h"

namespace agentrt::grammars {

Expr parse_regex(std::string_view pattern);

}  // namespace agentrt::grammars
