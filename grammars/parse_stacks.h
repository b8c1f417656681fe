// Parse stacks of the pushdown automaton, hash-consed in an arena so that equal stacks are one
// node id (sets of stacks deduplicate by id, and rollback is just keeping old ids), and the
// byte step over a set of stacks.
#pragma once

#include <cstdint>
#include <vector>

#include "grammars/pushdown_automaton.h"

namespace agentrt::grammars {

class StackArena {
 public:
  // Parent of the root rule's frame: popping to it means the grammar is complete.
  static constexpr int32_t kBottom = -1;
  // Parent standing for an unknown context (used to classify tokens per position).
  static constexpr int32_t kOpenBottom = -2;

  int32_t intern(int32_t state, int32_t parent);
  int32_t state(int32_t node) const { return nodes_[node].state; }
  int32_t parent(int32_t node) const { return nodes_[node].parent; }
  size_t size() const { return nodes_.size(); }

 private:
  struct Node {
    int32_t state, parent;
  };
  void grow();

  std::vector<Node> nodes_;
  // Open addressing (linear probing) from (state, parent) to node id; -1 = empty slot.
  std::vector<int32_t> table_;
  size_t mask_ = 0;
  // Nodes right above kBottom / kOpenBottom, by state: the common case, without hashing.
  std::vector<int32_t> above_bottom_, above_open_;
};

// Stacks whose top state has byte edges (the only ones that can consume input), plus flags.
struct StackSet {
  std::vector<int32_t> tops;
  bool can_end = false;      // some stack popped to kBottom: the grammar is complete
  bool popped_open = false;  // some stack popped to kOpenBottom
  bool dead() const { return tops.empty(); }
};

class StackStepper {
 public:
  StackStepper(const PushdownAutomaton& pda, StackArena& arena) : pda_(pda), arena_(arena) {}

  // Expands `nodes` (entering referenced rules, returning from finished ones) into `out`.
  void close(const std::vector<int32_t>& nodes, StackSet& out);
  // The stacks after consuming `byte` from `in`, closed.
  void advance(const StackSet& in, uint8_t byte, StackSet& out);
  // The set for the start of the grammar.
  void initial(StackSet& out);

  StackArena& arena() { return arena_; }

 private:
  const PushdownAutomaton& pda_;
  StackArena& arena_;
  std::vector<uint32_t> stamp_;
  uint32_t gen_ = 0;
  std::vector<int32_t> work_;
  std::vector<int32_t> raw_;
};

}  // namespace agentrt::grammars
