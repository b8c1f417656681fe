// Tells apart automaton states that some token can tell apart, lazily. Two states whose
// behaviour (bytes accepted, rules entered, where the rule may return) agrees on every input of
// up to `depth` bytes get the same signature, and share one token classification (PositionMasks
// over tokens of at most `depth` bytes). This is what keeps counted repetitions cheap: the
// states of [a-z]{0,255} that still allow 32 more characters are all alike, and so are two
// rules with the same body.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "grammars/pushdown_automaton.h"

namespace agentrt::grammars {

struct PositionSignature {
  uint64_t a = 0, b = 0;  // 128-bit hash of the unrolled behaviour
  // No rule is entered within `depth` bytes (and no state id stood in): the hash then depends
  // only on bytes and returns, so it means the same in every grammar.
  bool pure = true;
  bool operator==(const PositionSignature& o) const {
    return a == o.a && b == o.b && pure == o.pure;
  }
};
struct PositionSignatureHash {
  size_t operator()(const PositionSignature& s) const { return s.a ^ (s.b * 31); }
};

// Memoised signatures; not thread-safe (CompiledGrammar guards it).
class PositionSignatures {
 public:
  PositionSignatures(const PushdownAutomaton& pda, int depth) : pda_(pda), depth_(depth) {}
  PositionSignature of(int32_t state) { return compute(state, depth_, 0); }

 private:
  PositionSignature compute(int32_t state, int depth, int recursion);

  const PushdownAutomaton& pda_;
  int depth_;
  struct Memo {
    PositionSignature signature;
    bool done = false;  // false: being computed (a cycle if met again)
  };
  std::unordered_map<uint64_t, Memo> memo_;  // key: state * 64 + depth
};

}  // namespace agentrt::grammars
