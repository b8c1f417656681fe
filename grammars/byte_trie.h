// A byte trie stored in preorder: walking it is a loop over an array, and a dead subtree is
// skipped by jumping to its `end`. Used for the vocabulary and for per-position token suffixes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace agentrt::grammars {

class ByteTrie {
 public:
  struct Node {
    uint32_t end = 0;           // index one past this node's subtree
    uint32_t values_begin = 0;  // values ending exactly here: values()[begin, end)
    uint32_t values_end = 0;
    uint16_t depth = 0;  // bytes from the root (root = 0)
    uint8_t byte = 0;    // the byte leading here (unused for the root)
  };

  ByteTrie() = default;
  // keys[i] maps to values[i]; keys may repeat.
  ByteTrie(const std::vector<std::string_view>& keys, const std::vector<int32_t>& values);

  const std::vector<Node>& nodes() const { return nodes_; }
  const std::vector<int32_t>& values() const { return values_; }
  size_t size() const { return nodes_.size(); }
  size_t max_depth() const { return max_depth_; }
  bool empty() const { return nodes_.size() <= 1 && values_.empty(); }

 private:
  std::vector<Node> nodes_;
  std::vector<int32_t> values_;
  size_t max_depth_ = 0;
};

}  // namespace agentrt::grammars
