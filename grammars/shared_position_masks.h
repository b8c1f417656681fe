// Token classifications shared between all grammars compiled against one tokenizer, for
// positions whose signature is pure (position_classes.h): inside strings, numbers and
// whitespace every JSON-Schema grammar has the same positions, so a classification built for one
// schema serves the next. Owned by the TokenizerIndex (not global); thread-safe; bounded.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "grammars/position_classes.h"

namespace agentrt::grammars {

struct PositionMasks;

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

}  // namespace agentrt::grammars
