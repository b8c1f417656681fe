// The byte-level pushdown automaton a Grammar lowers to: one deterministic automaton per rule
// over bytes and rule references. A parse stack is a chain of states: the top is the position
// in the current rule, the ones below are the positions to return to.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace agentrt::grammars {

class Grammar;

struct PdaByteEdge {
  uint8_t lo = 0, hi = 0;  // inclusive byte range
  int32_t target = 0;
};

struct PdaRefEdge {
  int32_t rule = 0;    // the rule entered
  int32_t target = 0;  // where to continue in this rule once it returns
};

struct PdaState {
  int32_t rule = 0;
  bool final = false;              // the rule may return here
  std::vector<PdaByteEdge> bytes;  // sorted, disjoint ranges
  std::vector<PdaRefEdge> refs;

  // The target for byte b, or -1.
  int32_t next(uint8_t b) const {
    for (const PdaByteEdge& e : bytes) {
      if (b < e.lo) return -1;
      if (b <= e.hi) return e.target;
    }
    return -1;
  }
};

struct PdaRule {
  std::string name;
  int32_t start = 0;
  bool nullable = false;
};

struct PushdownAutomaton {
  std::vector<PdaState> states;
  std::vector<PdaRule> rules;
  int32_t root = 0;

  // Lowers a grammar: code points to UTF-8 byte sequences, each rule determinised and trimmed.
  // Throws GrammarError on left recursion or when the grammar (or a needed rule) matches nothing.
  static PushdownAutomaton build(const Grammar& grammar);
};

}  // namespace agentrt::grammars
