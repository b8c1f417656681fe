// Per automaton position (the state on top of a stack), the vocabulary classified once:
// tokens accepted whatever lies below the top (context-independent), and the trie nodes after
// which the top's rule may return. At mask time, the accepted set is copied and only the
// subtrees below those nodes are walked from the real stack (the adaptive token mask cache idea
// of XGrammar, with the context-dependent tokens kept as trie subtrees).
#pragma once

#include <cstdint>
#include <vector>

#include "grammars/byte_trie.h"
#include "grammars/pushdown_automaton.h"
#include "grammars/tokenizer_index.h"

namespace agentrt::grammars {

struct PositionMasks {
  // Either a full bitmask (many accepted) or a list of ids (few), whichever is smaller.
  std::vector<uint32_t> accepted_bits;
  std::vector<int32_t> accepted_ids;
  // Nodes of the classified trie right after which the rule may return: the tokens below such a
  // node are valid if their rest (the path from the node down) fits the real stack below.
  std::vector<uint32_t> return_points;

  void add_accepted_to(uint32_t* mask) const;
};

// Classifies the tokens of `trie` (tokenizer.short_trie() or long_trie()) for `state`.
PositionMasks build_position_masks(const PushdownAutomaton& pda, const TokenizerIndex& tokenizer,
                                   const ByteTrie& trie, int32_t state);

}  // namespace agentrt::grammars
