#include "grammars/position_masks.h"

#include <array>
#include <string_view>

#include "grammars/parse_stacks.h"

namespace agentrt::grammars {
namespace {

// Subtrees smaller than this (trie nodes) are walked, not cached: the lookup would cost more.
constexpr uint32_t kMinCachedSubtree = 32;

// Where the walk's results go: accepted token ids (as a bitmask or a list) and return points.
struct WalkSink {
  std::vector<uint32_t>* bits = nullptr;  // either this
  std::vector<int32_t>* ids = nullptr;    // or this
  std::vector<uint32_t>* return_points = nullptr;
  size_t count = 0;

  void accept(int32_t id) {
    if (bits) {
      (*bits)[id >> 5] |= 1u << (id & 31);
    } else {
      ids->push_back(id);
    }
    ++count;
  }
  void accept_all(const SubtreeMasks& m) {
    if (m.accepted_bits.empty()) {
      for (int32_t id : m.accepted) accept(id);
      return;
    }
    if (!bits) {
      for (size_t w = 0; w < m.accepted_bits.size(); ++w) {
        for (uint32_t b = m.accepted_bits[w]; b; b &= b - 1) {
          ids->push_back(static_cast<int32_t>(w * 32 + __builtin_ctz(b)));
        }
      }
    } else {
      for (size_t w = 0; w < m.accepted_bits.size(); ++w) (*bits)[w] |= m.accepted_bits[w];
    }
    count += m.num_accepted;
  }
};

// Walks the trie in preorder with a set of stacks per depth (level[d]: the stacks after the
// first d bytes of the current path), skipping dead subtrees.
class TrieWalk {
 public:
  TrieWalk(const PushdownAutomaton& pda, const ByteTrie& trie, size_t words,
           SubtreeMasksCache* subtrees)
      : words_(words),
        states_(pda.states),
        nodes_(trie.nodes()),
        values_(trie.values()),
        subtrees_(subtrees),
        stepper_(pda, arena_),
        level_(trie.max_depth() + 1),
        simple_(trie.max_depth() + 1, -1),
        simple_parent_(trie.max_depth() + 1, StackArena::kOpenBottom) {}

  // The whole trie from `state` (depth 0: the top itself, without expansion; its expansions
  // are separate tops at match time).
  void walk_all(int32_t state, WalkSink& sink) {
    simple_[0] = state;
    simple_parent_[0] = StackArena::kOpenBottom;
    walk(1, static_cast<uint32_t>(nodes_.size()), sink, true);
  }

 private:
  // A state that neither enters rules nor may return: a stack with it on top steps by plain
  // automaton transitions (the common case inside strings and numbers).
  bool plain(int32_t s) const { return states_[s].refs.empty() && !states_[s].final; }

  // Byte -> next state tables for the few states the walk sits in most (a string's content
  // and the middle of its UTF-8 characters): the hot loop is one lookup per trie node. Entries
  // are the next state, with kNotPlain added when it is not plain; -1 when there is none.
  static constexpr int32_t kNotPlain = 1 << 30;
  struct NextTable {
    int32_t state = -1;
    std::array<int32_t, 256> next;
  };
  const NextTable& table_for(int32_t s) {
    for (const NextTable& t : tables_) {
      if (t.state == s) return t;
    }
    NextTable& t = tables_[table_victim_++ % tables_.size()];
    t.state = s;
    t.next.fill(-1);
    for (const PdaByteEdge& e : states_[s].bytes) {
      int32_t v = plain(e.target) ? e.target : e.target + kNotPlain;
      for (int b = e.lo; b <= e.hi; ++b) t.next[b] = v;
    }
    return t;
  }

  void accept_values(const ByteTrie::Node& node, WalkSink& sink) {
    for (uint32_t v = node.values_begin; v < node.values_end; ++v) sink.accept(values_[v]);
  }

  // Walks nodes [first, end), all below one node whose level (depth of `first` minus one) is
  // set. `use_cache`: subtrees where the walk sits in a rule it entered come from subtrees_.
  void walk(uint32_t first, uint32_t end, WalkSink& sink, bool use_cache) {
    uint32_t i = first;
    while (i < end) {
      const ByteTrie::Node& node = nodes_[i];
      const size_t d = node.depth;
      bool alive = false, popped = false;
      simple_[d] = -1;
      if (simple_[d - 1] >= 0) {
        int32_t next = table_for(simple_[d - 1]).next[node.byte];
        if (next >= 0 && next < kNotPlain) {
          simple_[d] = next;
          simple_parent_[d] = simple_parent_[d - 1];
          alive = true;
        } else if (next >= 0) {
          seed_[0] = arena_.intern(next - kNotPlain, simple_parent_[d - 1]);
          stepper_.close(seed_, level_[d]);
          alive = !level_[d].dead();
          popped = level_[d].popped_open;
        }
      } else {
        stepper_.advance(level_[d - 1], node.byte, level_[d]);
        alive = !level_[d].dead();
        popped = level_[d].popped_open;
      }
      // One stack left (its expansions done by close): continue from it on the fast path.
      if (simple_[d] < 0 && level_[d].tops.size() == 1) {
        simple_[d] = arena_.state(level_[d].tops[0]);
        simple_parent_[d] = arena_.parent(level_[d].tops[0]);
      }
      // (A leaf has no longer tokens below it: nothing to check after the return.)
      if (popped && node.end > i + 1) sink.return_points->push_back(i);
      // Ending exactly where the rule may return is valid whatever the context: returning is
      // always possible and every automaton state is live.
      if (alive || popped) accept_values(node, sink);
      if (!alive) {
        if (simple_[d] < 0) level_[d].tops.clear();
        i = node.end;  // longer tokens here continue only past a return: see return_points
        continue;
      }
      if (use_cache && subtrees_ && simple_[d] >= 0 && node.end - i > kMinCachedSubtree) {
        below_entered_rule(i, sink);
        i = node.end;
        continue;
      }
      ++i;
    }
  }

  // The tokens below `node`, where the walk is one stack: a state of a rule it entered over
  // the stack to return to, or a state of the classified position's own rule over the unknown
  // context. Below the node the rule's own part is the same for every position that gets there
  // (cached); what follows its returns is walked from the real stack. (Positions meet in their
  // own rule where the automaton merged equivalent states: every node of an object key's
  // exclusion trie reaches the same middle-of-a-character states.)
  void below_entered_rule(uint32_t node, WalkSink& sink) {
    const size_t d = nodes_[node].depth;
    const int32_t state = simple_[d];
    const int32_t parent = simple_parent_[d];
    std::shared_ptr<const SubtreeMasks> cached = subtrees_->find(state, node);
    if (!cached) {
      auto built = std::make_shared<SubtreeMasks>();
      WalkSink inner;
      inner.ids = &built->accepted;
      inner.return_points = &built->return_points;
      simple_parent_[d] = StackArena::kOpenBottom;
      walk(node + 1, nodes_[node].end, inner, false);
      built->num_accepted = built->accepted.size();
      if (built->accepted.size() > words_) {
        built->accepted_bits.assign(words_, 0);
        for (int32_t id : built->accepted) built->accepted_bits[id >> 5] |= 1u << (id & 31);
        built->accepted = {};
      }
      cached = built;
      subtrees_->insert(state, node, cached);
    }
    sink.accept_all(*cached);
    if (parent == StackArena::kOpenBottom) {
      // Still in the classified position's own rule: its returns are the position's.
      sink.return_points->insert(sink.return_points->end(), cached->return_points.begin(),
                                 cached->return_points.end());
      return;
    }
    // After each return: the stack below, from there on (the tokens ending at the return are
    // accepted above). Walks at deeper levels only, so the levels above stay as they were.
    for (uint32_t r : cached->return_points) {
      const size_t dr = nodes_[r].depth;
      seed_[0] = parent;
      stepper_.close(seed_, level_[dr]);
      simple_[dr] = -1;
      if (level_[dr].popped_open) sink.return_points->push_back(r);
      if (level_[dr].dead()) continue;
      if (level_[dr].tops.size() == 1) {
        simple_[dr] = arena_.state(level_[dr].tops[0]);
        simple_parent_[dr] = arena_.parent(level_[dr].tops[0]);
      }
      walk(r + 1, nodes_[r].end, sink, true);
    }
  }

  size_t words_;  // of a vocabulary bitmask
  const std::vector<PdaState>& states_;
  const std::vector<ByteTrie::Node>& nodes_;
  const std::vector<int32_t>& values_;
  SubtreeMasksCache* subtrees_;
  StackArena arena_;
  StackStepper stepper_;
  std::vector<StackSet> level_;
  // simple_[d] >= 0: level d is exactly one stack, that state over simple_parent_[d] (level_[d]
  // unused). Steps from it are a table lookup while they reach plain states: inside a string
  // the walk over most of the vocabulary stays there, also in a rule entered on the way.
  std::vector<int32_t> simple_;
  std::vector<int32_t> simple_parent_;
  std::vector<int32_t> seed_ = std::vector<int32_t>(1);
  std::array<NextTable, 4> tables_;
  size_t table_victim_ = 0;
};

}  // namespace

void PositionMasks::add_accepted_to(uint32_t* mask) const {
  if (!accepted_bits.empty()) {
    for (size_t i = 0; i < accepted_bits.size(); ++i) mask[i] |= accepted_bits[i];
  } else {
    for (int32_t id : accepted_ids) mask[id >> 5] |= 1u << (id & 31);
  }
}

PositionMasks build_position_masks(const PushdownAutomaton& pda, const TokenizerIndex& tokenizer,
                                   const ByteTrie& trie, int32_t state,
                                   SubtreeMasksCache* subtrees) {
  PositionMasks out;
  const size_t words = tokenizer.mask_words();
  std::vector<uint32_t> accepted(words, 0);
  WalkSink sink;
  sink.bits = &accepted;
  sink.return_points = &out.return_points;
  TrieWalk(pda, trie, words, subtrees).walk_all(state, sink);
  // A token may be counted twice (accepted both inside a cached subtree's rule and after its
  // return): the count only chooses the representation.
  if (sink.count > words) {
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
