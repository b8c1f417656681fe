#include "grammars/parse_stacks.h"

#include <algorithm>

namespace agentrt::grammars {
namespace {

// splitmix64's finalizer: every key bit reaches the low bits the table uses.
uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

int32_t StackArena::intern(int32_t state, int32_t parent) {
  if (parent < 0) {
    std::vector<int32_t>& direct = parent == kBottom ? above_bottom_ : above_open_;
    if (direct.size() <= static_cast<size_t>(state)) direct.resize(state + 1, -1);
    int32_t& slot = direct[state];
    if (slot < 0) {
      slot = static_cast<int32_t>(nodes_.size());
      nodes_.push_back(Node{state, parent});
    }
    return slot;
  }
  if (nodes_.size() * 2 >= table_.size()) grow();
  uint64_t key =
      (static_cast<uint64_t>(static_cast<uint32_t>(state)) << 32) | static_cast<uint32_t>(parent);
  size_t h = mix(key);
  while (true) {
    int32_t& slot = table_[h & mask_];
    if (slot < 0) {
      slot = static_cast<int32_t>(nodes_.size());
      nodes_.push_back(Node{state, parent});
      return slot;
    }
    if (nodes_[slot].state == state && nodes_[slot].parent == parent) return slot;
    ++h;
  }
}

void StackArena::grow() {
  size_t cap = std::max<size_t>(table_.size() * 2, 1024);
  table_.assign(cap, -1);
  mask_ = cap - 1;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (n.parent < 0) continue;  // those live in the direct tables
    uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(n.state)) << 32) |
                   static_cast<uint32_t>(n.parent);
    size_t h = mix(key);
    while (table_[h & mask_] >= 0) ++h;
    table_[h & mask_] = static_cast<int32_t>(i);
  }
}

void StackStepper::close(const std::vector<int32_t>& nodes, StackSet& out) {
  out.tops.clear();
  out.can_end = false;
  out.popped_open = false;
  if (++gen_ == 0) {
    std::fill(stamp_.begin(), stamp_.end(), 0);
    gen_ = 1;
  }
  work_.assign(nodes.begin(), nodes.end());
  while (!work_.empty()) {
    int32_t n = work_.back();
    work_.pop_back();
    if (stamp_.size() <= static_cast<size_t>(n)) stamp_.resize(arena_.size() + 1024, 0);
    if (stamp_[n] == gen_) continue;
    stamp_[n] = gen_;
    int32_t parent = arena_.parent(n);
    const PdaState& st = pda_.states[arena_.state(n)];
    if (!st.bytes.empty()) out.tops.push_back(n);
    for (const PdaRefEdge& r : st.refs) {
      int32_t ret = arena_.intern(r.target, parent);
      work_.push_back(arena_.intern(pda_.rules[r.rule].start, ret));
    }
    if (st.final) {
      if (parent == StackArena::kBottom) {
        out.can_end = true;
      } else if (parent == StackArena::kOpenBottom) {
        out.popped_open = true;
      } else {
        work_.push_back(parent);
      }
    }
  }
}

void StackStepper::advance(const StackSet& in, uint8_t byte, StackSet& out) {
  raw_.clear();
  for (int32_t n : in.tops) {
    int32_t next = pda_.states[arena_.state(n)].next(byte);
    if (next >= 0) raw_.push_back(arena_.intern(next, arena_.parent(n)));
  }
  if (raw_.empty()) {
    out.tops.clear();
    out.can_end = out.popped_open = false;
    return;
  }
  close(raw_, out);
}

void StackStepper::initial(StackSet& out) {
  std::vector<int32_t> start{arena_.intern(pda_.rules[pda_.root].start, StackArena::kBottom)};
  close(start, out);
}

}  // namespace agentrt::grammars
