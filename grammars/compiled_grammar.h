// A grammar compiled against a tokenizer: the byte-level pushdown automaton plus a per-position
// token-mask cache. Immutable to its users and shareable across threads; the cache fills lazily
// (guarded internally) the first time a position is reached.
#pragma once

#include <memory>

#include "grammars/grammar.h"
#include "grammars/pushdown_automaton.h"
#include "grammars/tokenizer_index.h"

namespace agentrt::grammars {

struct PositionMasks;  // position_masks.h

class CompiledGrammar {
 public:
  CompiledGrammar(PushdownAutomaton pda, std::shared_ptr<const TokenizerIndex> tokenizer);
  ~CompiledGrammar();

  const PushdownAutomaton& automaton() const { return pda_; }
  const TokenizerIndex& tokenizer() const { return *tokenizer_; }
  const std::shared_ptr<const TokenizerIndex>& tokenizer_ptr() const { return tokenizer_; }
  // Tokens classified for a stack whose top is at `state` (built on first use; thread-safe).
  const PositionMasks& position_masks(int32_t state) const;
  // Builds the cache for every state now (moves cost from the first masks to compile time).
  void precompute_all() const;

 private:
  PushdownAutomaton pda_;
  std::shared_ptr<const TokenizerIndex> tokenizer_;
  struct Cache;
  std::unique_ptr<Cache> cache_;
};

std::shared_ptr<const CompiledGrammar> compile(const Grammar& grammar,
                                               std::shared_ptr<const TokenizerIndex> tokenizer);

}  // namespace agentrt::grammars
