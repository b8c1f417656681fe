#include "grammars/byte_trie.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>

namespace agentrt::grammars {

ByteTrie::ByteTrie(const std::vector<std::string_view>& keys, const std::vector<int32_t>& values) {
  if (keys.size() != values.size()) throw std::invalid_argument("ByteTrie: keys/values size");
  std::vector<uint32_t> order(keys.size());
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return keys[a] != keys[b] ? keys[a] < keys[b] : a < b; });
  nodes_.push_back(Node{});
  values_.reserve(keys.size());
  // Path of node indices from the root for the previous key; sorted keys share prefixes with it.
  std::vector<uint32_t> path{0};
  std::string_view prev;
  auto close_to = [&](size_t depth) {
    while (path.size() > depth + 1) {
      nodes_[path.back()].end = static_cast<uint32_t>(nodes_.size());
      path.pop_back();
    }
  };
  for (uint32_t k : order) {
    std::string_view key = keys[k];
    if (key.size() > UINT16_MAX) throw std::invalid_argument("ByteTrie: key too long");
    size_t common = 0;
    while (common < key.size() && common < prev.size() && key[common] == prev[common]) ++common;
    common = std::min(common, path.size() - 1);
    close_to(common);
    for (size_t d = common; d < key.size(); ++d) {
      Node n;
      n.depth = static_cast<uint16_t>(d + 1);
      n.byte = static_cast<uint8_t>(key[d]);
      path.push_back(static_cast<uint32_t>(nodes_.size()));
      nodes_.push_back(n);
    }
    Node& leaf = nodes_[path.back()];
    if (leaf.values_end == leaf.values_begin) {
      leaf.values_begin = static_cast<uint32_t>(values_.size());
    }
    values_.push_back(values[k]);
    leaf.values_end = static_cast<uint32_t>(values_.size());
    prev = key;
  }
  close_to(0);
  for (const Node& n : nodes_) max_depth_ = std::max<size_t>(max_depth_, n.depth);
  nodes_[0].end = static_cast<uint32_t>(nodes_.size());
}

}  // namespace agentrt::grammars
