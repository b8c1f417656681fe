// A grammar compiled against a tokenizer: the byte-level pushdown automaton plus a per-position
// token-mask cache. Immutable to its users and shareable across threads; the cache fills lazily
// (guarded internally) the first time a position is reached.
#pragma once

#include <cstdint>
#include <memory>

#include "grammars/grammar.h"
#include "grammars/position_classes.h"
#include "grammars/pushdown_automaton.h"
#include "grammars/tokenizer_index.h"

namespace agentrt::grammars {

struct PositionMasks;    // position_masks.h
class PastReturnTokens;  // past_return_tokens.h

class CompiledGrammar {
 public:
  CompiledGrammar(PushdownAutomaton pda, std::shared_ptr<const TokenizerIndex> tokenizer);
  ~CompiledGrammar();

  const PushdownAutomaton& automaton() const { return pda_; }
  const TokenizerIndex& tokenizer() const { return *tokenizer_; }
  const std::shared_ptr<const TokenizerIndex>& tokenizer_ptr() const { return tokenizer_; }
  // Tokens classified for a stack whose top is at `state` (built on first use; thread-safe):
  // the short tokens (shared by all states alike for them, see position_classes.h) and the
  // long ones (per state).
  const PositionMasks& short_token_masks(int32_t state) const;
  const PositionMasks& long_token_masks(int32_t state) const;
  // Distinct short-token classifications built so far.
  size_t num_short_token_masks() const;
  // The behaviour of `state` on inputs of up to kShortTokenBytes bytes (position_classes.h).
  PositionSignature short_signature(int32_t state) const;
  // Tokens past returns, shared by the matchers of this grammar (a cache, hence through const).
  PastReturnTokens& past_return_tokens() const;
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
