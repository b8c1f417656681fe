// The tokenizer vocabulary as the grammar matcher needs it: token bytes in a byte trie.
// Built once per tokenizer and shared (immutable) by every compiled grammar.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "grammars/byte_trie.h"
#include "grammars/shared_position_masks.h"

namespace agentrt::grammars {

// From the tokenizer, engine-agnostic.
struct Vocabulary {
  std::vector<std::string> token_bytes;  // exact bytes of each token id
  std::vector<int32_t> stop_tokens;      // e.g. EOS: allowed exactly when the grammar may end
  std::vector<int32_t> special_tokens;   // never matched as text (BOS, pad, <｜User｜>...)
};

class TokenizerIndex {
 public:
  static std::shared_ptr<const TokenizerIndex> build(Vocabulary vocab);

  size_t vocab_size() const { return vocab_.token_bytes.size(); }
  size_t mask_words() const { return (vocab_size() + 31) / 32; }
  const Vocabulary& vocabulary() const { return vocab_; }
  // Tokens up to this many bytes are classified per class of equivalent automaton positions
  // (position_classes.h); longer ones (few) per position.
  static constexpr size_t kShortTokenBytes = 32;

  // Every non-empty, non-special, non-stop token, keyed by its bytes.
  const ByteTrie& trie() const { return trie_; }
  // The same tokens split by length: at most kShortTokenBytes, and longer.
  const ByteTrie& short_trie() const { return short_trie_; }
  const ByteTrie& long_trie() const { return long_trie_; }
  bool is_stop(int32_t id) const { return kind_[id] == TokenKind::kStop; }
  bool is_special(int32_t id) const { return kind_[id] == TokenKind::kSpecial; }
  // Classifications of grammar-independent positions, shared by every grammar compiled against
  // this tokenizer (a cache: filled through a const index, hence a pointer).
  SharedPositionMasks& shared_masks() const { return *shared_masks_; }
  // Walks below trie nodes from grammar-independent states (SubtreeMasksCache), likewise.
  SharedSubtreeMasks& shared_subtrees() const { return *shared_subtrees_; }

 private:
  enum class TokenKind : uint8_t { kText, kStop, kSpecial, kEmpty };
  Vocabulary vocab_;
  std::vector<TokenKind> kind_;
  ByteTrie trie_, short_trie_, long_trie_;
  std::unique_ptr<SharedPositionMasks> shared_masks_ = std::make_unique<SharedPositionMasks>(4096);
  std::unique_ptr<SharedSubtreeMasks> shared_subtrees_ =
      std::make_unique<SharedSubtreeMasks>(size_t{128} << 20);
};

}  // namespace agentrt::grammars
