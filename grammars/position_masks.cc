#include "grammars/position_masks.h"

#include <string_view>

#include "grammars/parse_stacks.h"

namespace agentrt::grammars {

void PositionMasks::add_accepted_to(uint32_t* mask) const {
  if (!accepted_bits.empty()) {
    for (size_t i = 0; i < accepted_bits.size(); ++i) mask[i] |= accepted_bits[i];
  } else {
    for (int32_t id : accepted_ids) mask[id >> 5] |= 1u << (id & 31);
  }
}

PositionMasks build_position_masks(const PushdownAutomaton& pda, const TokenizerIndex& tokenizer,
                                   int32_t state) {
  PositionMasks out;
  const ByteTrie& trie = tokenizer.trie();
  const std::vector<ByteTrie::Node>& nodes = trie.nodes();
  const std::vector<int32_t>& values = trie.values();
  const Vocabulary& vocab = tokenizer.vocabulary();

  StackArena arena;
  StackStepper stepper(pda, arena);
  size_t max_depth = 1;
  for (const ByteTrie::Node& n : nodes) max_depth = std::max<size_t>(max_depth, n.depth + 1);
  std::vector<StackSet> level(max_depth);
  // pops[d]: the rule may return right after the d-th byte of the current path.
  std::vector<uint8_t> pops(max_depth, 0);
  std::vector<uint16_t> pop_count(max_depth, 0);
  // Depth 0: the top itself, without expansion (its expansions are separate tops at match time).
  level[0].tops.push_back(arena.intern(state, StackArena::kOpenBottom));

  std::vector<int32_t> accepted;
  std::vector<std::string_view> suffix_keys;
  std::vector<int32_t> suffix_ids;
  size_t i = 1;
  while (i < nodes.size()) {
    const ByteTrie::Node& node = nodes[i];
    size_t d = node.depth;
    StackSet& cur = level[d];
    stepper.advance(level[d - 1], node.byte, cur);
    pops[d] = cur.popped_open;
    pop_count[d] = pop_count[d - 1] + (cur.popped_open ? 1 : 0);
    if (cur.dead() && pop_count[d] == 0) {
      i = node.end;
      continue;
    }
    for (uint32_t v = node.values_begin; v < node.values_end; ++v) {
      int32_t id = values[v];
      // Ending exactly where the rule may return is valid whatever the context: returning is
      // always possible and every automaton state is live.
      if (!cur.dead() || pops[d]) {
        accepted.push_back(id);
        continue;
      }
      std::string_view bytes = vocab.token_bytes[id];
      for (size_t k = 1; k < d; ++k) {
        if (pops[k]) {
          suffix_keys.push_back(bytes.substr(k));
          suffix_ids.push_back(id);
        }
      }
    }
    ++i;
  }
  size_t words = tokenizer.mask_words();
  if (accepted.size() > words) {
    out.accepted_bits.assign(words, 0);
    for (int32_t id : accepted) out.accepted_bits[id >> 5] |= 1u << (id & 31);
  } else {
    out.accepted_ids = std::move(accepted);
  }
  if (!suffix_keys.empty()) {
    out.return_suffixes = ByteTrie(suffix_keys, suffix_ids);
    out.has_suffixes = true;
  }
  return out;
}

}  // namespace agentrt::grammars
