// Token classifications shared between all grammars compiled against one tokenizer, for
// positions whose signature is pure (position_classes.h): inside strings, numbers and
// whitespace every JSON-Schema grammar has the same positions, so a classification built for one
// schema serves the next. Owned by the TokenizerIndex (not global); thread-safe; bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "grammars/position_classes.h"

namespace agentrt::grammars {

struct PositionMasks;
struct SubtreeMasks;

class SharedPositionMasks {
 public:
  explicit SharedPositionMasks(size_t capacity) : capacity_(capacity) {}

  std::shared_ptr<const PositionMasks> find(const PositionSignature& sig) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(sig);
    return it == entries_.end() ? nullptr : it->second;
  }
  // Returns the entry now stored for `sig` (an earlier one wins); keeps nothing when full.
  std::shared_ptr<const PositionMasks> insert(const PositionSignature& sig,
                                              std::shared_ptr<const PositionMasks> masks) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries_.find(sig); it != entries_.end()) return it->second;
    if (entries_.size() < capacity_) entries_.emplace(sig, masks);
    return masks;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.size();
  }

 private:
  size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_map<PositionSignature, std::shared_ptr<const PositionMasks>, PositionSignatureHash>
      entries_;
};

// Walks below one trie node from a state whose signature is pure (position_masks.h,
// SubtreeMasksCache): the first byte of an additional property's key enters the rest-of-string
// rule, the same in every grammar, so the walks below each first byte serve every schema.
class SharedSubtreeMasks {
 public:
  // Bounded by the bytes of what it keeps (the caller says how many an entry holds).
  explicit SharedSubtreeMasks(size_t max_bytes) : max_bytes_(max_bytes) {}

  std::shared_ptr<const SubtreeMasks> find(const PositionSignature& sig, uint32_t node) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(Key{sig, node});
    return it == entries_.end() ? nullptr : it->second;
  }
  // Keeps nothing when full.
  void insert(const PositionSignature& sig, uint32_t node,
              std::shared_ptr<const SubtreeMasks> masks, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes_ + bytes > max_bytes_) return;
    if (entries_.emplace(Key{sig, node}, std::move(masks)).second) bytes_ += bytes;
  }

 private:
  struct Key {
    PositionSignature sig;
    uint32_t node;
    bool operator==(const Key& o) const { return sig == o.sig && node == o.node; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return PositionSignatureHash()(k.sig) ^ (uint64_t{k.node} * 0x9E3779B97F4A7C15ull);
    }
  };
  size_t max_bytes_;
  size_t bytes_ = 0;  // guarded by mu_
  mutable std::mutex mu_;
  std::unordered_map<Key, std::shared_ptr<const SubtreeMasks>, KeyHash> entries_;
};

}  // namespace agentrt::grammars
