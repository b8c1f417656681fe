// Tokens that continue past a return from a position's rule, per return point and stack below,
// shared by all matchers of one grammar. A position's classification keeps the trie nodes after
// which its rule may return (position_masks.h); which tokens below such a node are valid depends
// on the stack the rule returns into, so the matcher walks them from there. Many positions share
// those walks: every position inside an object key returns through the same closing-quote node
// into the same stack, every element of a long array returns into stacks that differ only in
// the count, and every request with the same schema meets the same stacks again. Long tokens
// need the very stack, identified by its states (arena ids are per matcher); short tokens go at
// most kShortTokenBytes past the return, where a stack acts as the signatures of its states say
// (each state's behaviour up to that depth, returns included, position_classes.h), so those
// stand in for the states. Thread-safe; bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "grammars/position_classes.h"

namespace agentrt::grammars {

// The stack returned into, top first: long tokens by state ids, short ones by signatures.
struct PastReturnStack {
  bool long_trie = false;
  std::vector<int32_t> states;
  std::vector<PositionSignature> signatures;
  bool operator==(const PastReturnStack& o) const {
    return long_trie == o.long_trie && states == o.states && signatures == o.signatures;
  }
};

struct PastReturnStackHash {
  size_t operator()(const PastReturnStack& k) const {
    uint64_t h = k.long_trie;
    for (int32_t s : k.states) h = (h ^ static_cast<uint32_t>(s)) * 0x100000001B3ull;
    for (const PositionSignature& s : k.signatures) h = (h ^ s.a) * 0x100000001B3ull;
    return h ^ (h >> 29);
  }
};

// Token ids as a list (few) or a bitmask of the vocabulary (many), whichever is smaller.
struct TokenSet {
  std::vector<int32_t> ids;
  std::vector<uint32_t> bits;

  void add_to(uint32_t* mask) const {
    if (!bits.empty()) {
      for (size_t w = 0; w < bits.size(); ++w) mask[w] |= bits[w];
    } else {
      for (int32_t id : ids) mask[id >> 5] |= 1u << (id & 31);
    }
  }
};

// Stacks are numbered once (a position has many return points into one stack), then results
// are kept by (stack number, return point).
class PastReturnTokens {
 public:
  // Bounded by the bytes of what it keeps (stack keys and token sets).
  explicit PastReturnTokens(size_t max_bytes) : max_bytes_(max_bytes) {}

  // The stack's number, or -1 when the cache is full and has not seen it.
  int64_t stack_id(const PastReturnStack& stack) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = stacks_.find(stack);
    if (it != stacks_.end()) return it->second;
    const size_t bytes = (stack.states.size() + 4 * stack.signatures.size() + 8) * 4;
    if (bytes_ + bytes > max_bytes_) return -1;
    bytes_ += bytes;
    const auto id = static_cast<int64_t>(stacks_.size());
    stacks_.emplace(stack, id);
    return id;
  }
  std::shared_ptr<const TokenSet> find(int64_t stack, uint32_t node) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(key(stack, node));
    return it == entries_.end() ? nullptr : it->second;
  }
  // Keeps nothing once full (the caller still has its result).
  void insert(int64_t stack, uint32_t node, std::shared_ptr<const TokenSet> tokens) {
    const size_t bytes = (tokens->ids.size() + tokens->bits.size() + 8) * 4;
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes_ + bytes > max_bytes_) return;
    if (entries_.emplace(key(stack, node), std::move(tokens)).second) bytes_ += bytes;
  }

 private:
  static uint64_t key(int64_t stack, uint32_t node) {
    return (static_cast<uint64_t>(stack) << 32) | node;
  }
  size_t max_bytes_;
  size_t bytes_ = 0;  // guarded by mu_
  mutable std::mutex mu_;
  std::unordered_map<PastReturnStack, int64_t, PastReturnStackHash> stacks_;
  std::unordered_map<uint64_t, std::shared_ptr<const TokenSet>> entries_;
};

}  // namespace agentrt::grammars
