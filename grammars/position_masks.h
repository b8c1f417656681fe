// Per automaton position (the state on top of a stack), the vocabulary classified once:
// tokens accepted whatever lies below the top (context-independent), and tokens that can only be
// valid by returning from the top's rule, stored as the suffix left after that return. At mask
// time, the accepted set is copied and only the suffixes are checked against the real stack
// (the adaptive token mask cache idea of XGrammar, with suffixes shared in a trie).
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
  // Keys: the bytes after the rule returns; values: token ids.
  ByteTrie return_suffixes;
  bool has_suffixes = false;

  void add_accepted_to(uint32_t* mask) const;
};

// Classifies the tokens of `trie` (tokenizer.short_trie() or long_trie()) for `state`.
PositionMasks build_position_masks(const PushdownAutomaton& pda, const TokenizerIndex& tokenizer,
                                   const ByteTrie& trie, int32_t state);

}  // namespace agentrt::grammars
