// The parsed form of a grammar: rules whose bodies are expression trees over Unicode code points.
// Both the EBNF parser and the regex parser produce it; grammar_normalizer.h lowers it to bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace agentrt::grammars {

// Inclusive code point range.
struct CodePointRange {
  uint32_t lo = 0;
  uint32_t hi = 0;
};

struct Expr {
  enum class Kind {
    kSequence,     // children in order; empty = the empty string
    kAlternation,  // one of children
    kLiteral,      // the UTF-8 bytes of `text`
    kCharClass,    // one code point in `ranges` (already complemented when negated)
    kRuleRef,      // the rule `rule`
    kRepeat,       // children[0] repeated min..max times (max = kUnbounded)
  };
  static constexpr uint32_t kUnbounded = UINT32_MAX;

  Kind kind = Kind::kSequence;
  std::vector<Expr> children;
  std::string text;                    // kLiteral
  std::vector<CodePointRange> ranges;  // kCharClass, sorted and disjoint
  int32_t rule = -1;                   // kRuleRef
  uint32_t min = 0, max = 0;           // kRepeat

  static Expr sequence(std::vector<Expr> items);
  static Expr alternation(std::vector<Expr> items);
  static Expr literal(std::string bytes);
  static Expr char_class(std::vector<CodePointRange> ranges);
  static Expr rule_ref(int32_t rule);
  static Expr repeat(Expr item, uint32_t min, uint32_t max);
};

// How deeply the parsers let groups and stacked quantifiers nest: every pass over an Expr tree
// recurses, so deeper input must be a GrammarError, not a stack overflow.
constexpr int kMaxExprNesting = 256;

struct GrammarRule {
  std::string name;
  Expr body;
};

// Sorts and merges ranges; removes UTF-16 surrogates, which UTF-8 cannot encode.
std::vector<CodePointRange> normalize_ranges(std::vector<CodePointRange> ranges);
// The complement within [0, 0x10FFFF] minus surrogates.
std::vector<CodePointRange> complement_ranges(const std::vector<CodePointRange>& ranges);

}  // namespace agentrt::grammars
