#include "grammars/position_masks.h"

#include <array>
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
                                   const ByteTrie& trie, int32_t state) {
  PositionMasks out;
  const std::vector<ByteTrie::Node>& nodes = trie.nodes();
  const std::vector<int32_t>& values = trie.values();
  const std::vector<PdaState>& states = pda.states;
  // A state that neither enters rules nor may return: a stack with it on top over the open
  // bottom steps by plain automaton transitions (the common case inside strings and numbers).
  auto plain = [&](int32_t s) { return states[s].refs.empty() && !states[s].final; };
  // Byte -> next state tables for the few states the walk sits in most (a string's content
  // and the middle of its UTF-8 characters): the hot loop is one lookup per trie node. Entries
  // are the next state, with kNotPlain added when it is not plain; -1 when there is none.
  constexpr int32_t kNotPlain = 1 << 30;
  struct NextTable {
    int32_t state = -1;
    std::array<int32_t, 256> next;
  };
  std::array<NextTable, 4> tables;
  size_t table_victim = 0;
  auto table_for = [&](int32_t s) -> const NextTable& {
    for (const NextTable& t : tables) {
      if (t.state == s) return t;
    }
    NextTable& t = tables[table_victim++ % tables.size()];
    t.state = s;
    t.next.fill(-1);
    for (const PdaByteEdge& e : states[s].bytes) {
      int32_t v = plain(e.target) ? e.target : e.target + kNotPlain;
      for (int b = e.lo; b <= e.hi; ++b) t.next[b] = v;
    }
    return t;
  };

  StackArena arena;
  StackStepper stepper(pda, arena);
  size_t max_depth = trie.max_depth() + 1;
  std::vector<StackSet> level(max_depth);
  // simple[d] >= 0: level d is exactly that plain state over the open bottom (level[d] unused).
  std::vector<int32_t> simple(max_depth, -1);
  // Depth 0: the top itself, without expansion (its expansions are separate tops at match time).
  simple[0] = state;

  size_t words = tokenizer.mask_words();
  std::vector<uint32_t> accepted(words, 0);
  size_t num_accepted = 0;
  std::vector<int32_t> seed(1);
  size_t i = 1;
  while (i < nodes.size()) {
    const ByteTrie::Node& node = nodes[i];
    size_t d = node.depth;
    bool alive = false, popped = false;
    simple[d] = -1;
    if (simple[d - 1] >= 0) {
      int32_t next = table_for(simple[d - 1]).next[node.byte];
      if (next >= 0 && next < kNotPlain) {
        simple[d] = next;
        alive = true;
      } else if (next >= 0) {
        seed[0] = arena.intern(next - kNotPlain, StackArena::kOpenBottom);
        stepper.close(seed, level[d]);
        alive = !level[d].dead();
        popped = level[d].popped_open;
      }
    } else {
      stepper.advance(level[d - 1], node.byte, level[d]);
      alive = !level[d].dead();
      popped = level[d].popped_open;
    }
    // (A leaf has no longer tokens below it: nothing to check after the return.)
    if (popped && node.end > i + 1) out.return_points.push_back(static_cast<uint32_t>(i));
    // Ending exactly where the rule may return is valid whatever the context: returning is
    // always possible and every automaton state is live.
    if (alive || popped) {
      for (uint32_t v = node.values_begin; v < node.values_end; ++v) {
        int32_t id = values[v];
        accepted[id >> 5] |= 1u << (id & 31);
        ++num_accepted;
      }
    }
    if (!alive) {
      if (simple[d] < 0) level[d].tops.clear();
      i = node.end;  // longer tokens here continue only past a return: see return_points
      continue;
    }
    ++i;
  }
  if (num_accepted > words) {
    out.accepted_bits = std::move(accepted);
  } else {
    for (size_t w = 0; w < words; ++w) {
      for (uint32_t bits = accepted[w]; bits; bits &= bits - 1) {
        out.accepted_ids.push_back(static_cast<int32_t>(w * 32 + __builtin_ctz(bits)));
      }
    }
  }
  return out;
}

}  // namespace agentrt::grammars
