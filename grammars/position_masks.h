// Per automaton position (the state on top of a stack), the vocabulary classified once:
// tokens accepted whatever lies below the top (context-independent), and the trie nodes after
// which the top's rule may return. At mask time, the accepted set is copied and only the
// subtrees below those nodes are walked from the real stack (the adaptive token mask cache idea
// of XGrammar, with the context-dependent tokens kept as trie subtrees).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <unordered_map>
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

// The tokens below one trie node, walked from one automaton state over an unknown context:
// those accepted, and the nodes after which that state's rule returned (the tokens below them
// depend on what lies under it).
struct SubtreeMasks {
  // Accepted as ids, or as a bitmask of the vocabulary when that is smaller: below a position's
  // first byte there may be tens of thousands, added to every position entering the rule there.
  std::vector<int32_t> accepted;
  std::vector<uint32_t> accepted_bits;
  size_t num_accepted = 0;
  std::vector<uint32_t> return_points;
};

// SubtreeMasks by (state, node), for one grammar and one trie. Many positions of a grammar enter
// the same rule on their first bytes (every position in an object key that may still become an
// additional property enters the rest-of-string rule): the walk below such a node is then done
// once per grammar instead of once per position. When given `shared` (the short trie's, owned by
// the TokenizerIndex) and the grammar's signatures, walks from states with a pure signature
// (grammar-independent, position_classes.h) are shared with every grammar of the tokenizer.
// Thread-safe.
class SubtreeMasksCache {
 public:
  using SignatureOf = std::function<PositionSignature(int32_t state)>;
  SubtreeMasksCache() = default;
  SubtreeMasksCache(SharedSubtreeMasks* shared, SignatureOf signature_of)
      : shared_(shared), signature_of_(std::move(signature_of)) {}

  std::shared_ptr<const SubtreeMasks> find(int32_t state, uint32_t node) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = entries_.find(key(state, node));
      if (it != entries_.end()) return it->second;
    }
    if (!shared_) return nullptr;
    PositionSignature sig = signature_of_(state);
    if (!sig.pure) return nullptr;
    std::shared_ptr<const SubtreeMasks> found = shared_->find(sig, node);
    if (found) {
      std::lock_guard<std::mutex> lock(mu_);
      entries_.emplace(key(state, node), found);
    }
    return found;
  }
  void insert(int32_t state, uint32_t node, std::shared_ptr<const SubtreeMasks> masks) {
    if (shared_) {
      PositionSignature sig = signature_of_(state);
      const size_t bytes = (masks->accepted.size() + masks->accepted_bits.size() +
                            masks->return_points.size() + 16) *
                           4;
      if (sig.pure) shared_->insert(sig, node, masks, bytes);
    }
    std::lock_guard<std::mutex> lock(mu_);
    entries_.emplace(key(state, node), std::move(masks));
  }

 private:
  static uint64_t key(int32_t state, uint32_t node) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(state)) << 32) | node;
  }
  SharedSubtreeMasks* shared_ = nullptr;
  SignatureOf signature_of_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<const SubtreeMasks>> entries_;
};

// Classifies the tokens of `trie` (tokenizer.short_trie() or long_trie()) for `state`.
// `subtrees` (may be null) caches walks below nodes where the walk entered another rule.
PositionMasks build_position_masks(const PushdownAutomaton& pda, const TokenizerIndex& tokenizer,
                                   const ByteTrie& trie, int32_t state,
                                   SubtreeMasksCache* subtrees = nullptr);

}  // namespace agentrt::grammars
