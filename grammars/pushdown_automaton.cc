#include "grammars/pushdown_automaton.h"

#include <algorithm>
#include <bit>
#include <map>
#include <optional>
#include <span>
#include <unordered_map>
#include <unordered_set>

#include "grammars/grammar.h"
#include "grammars/repeat_lowering.h"
#include "grammars/utf8.h"

namespace agentrt::grammars {
namespace {

// Limits that keep hostile grammars from exhausting memory; errors name them.
constexpr size_t kMaxNfaStates = 4'000'000;
constexpr size_t kMaxDfaStatesPerRule = 400'000;
// The NFA states all of a rule's DFA states hold, summed: the determinization's work and
// memory. Subsets of ~80 members reach it 8 times sooner than the state limit (a pattern like
// ^(?:\S.+\s+){0,99}\S+- took 4.4 s to be refused, now 1.0 s); MaskBench's largest rule holds
// 0.7 M.
constexpr size_t kMaxDfaMembersPerRule = 4'000'000;

// A state's edges, as views into the builder's packed arrays (see NfaBuilder::finish).
struct NfaState {
  std::span<const int32_t> eps;
  std::span<const PdaByteEdge> bytes;
  std::span<const PdaRefEdge> refs;
};

// The automaton's rules: those reachable from the root, numbered as first referenced (the
// root is 0). Numbered while lowering, so that no separate walk over the grammar finds them.
class RuleNumbering {
 public:
  RuleNumbering(size_t grammar_rules, int32_t root) : index_(grammar_rules, -1) { number(root); }
  // `grammar_rule` may be past the grammar's rules (one made by RepeatHoisting).
  int32_t number(int32_t grammar_rule) {
    if (static_cast<size_t>(grammar_rule) >= index_.size()) index_.resize(grammar_rule + 1, -1);
    int32_t& i = index_[grammar_rule];
    if (i < 0) {
      i = static_cast<int32_t>(order_.size());
      order_.push_back(grammar_rule);
    }
    return i;
  }
  // Grows while rules are lowered.
  const std::vector<int32_t>& grammar_rules() const { return order_; }

 private:
  std::vector<int32_t> index_;  // grammar rule → automaton rule, -1 until referenced
  std::vector<int32_t> order_;  // automaton rule → grammar rule
};

class NfaBuilder {
 public:
  explicit NfaBuilder(RuleNumbering& numbering) : numbering_(numbering) {}

  // Starts a new rule; the buffers are kept (one builder serves every rule of a grammar).
  void reset(const std::string& rule) {
    rule_ = &rule;
    num_states_ = 0;
    eps_.clear();
    bytes_.clear();
    refs_.clear();
  }

  struct Fragment {
    int32_t start, end;
  };

  int32_t add() {
    if (num_states_ >= kMaxNfaStates) {
      throw GrammarError("rule '" + *rule_ + "' is too large (over " +
                         std::to_string(kMaxNfaStates) + " automaton states)");
    }
    return static_cast<int32_t>(num_states_++);
  }
  void eps(int32_t from, int32_t to) { eps_.push_back({from, to}); }
  void byte(int32_t from, uint8_t lo, uint8_t hi, int32_t to) {
    bytes_.push_back({from, PdaByteEdge{lo, hi, to}});
  }
  // `rule` is the grammar's; the edge holds the automaton's number.
  void ref(int32_t from, int32_t rule, int32_t to) {
    refs_.push_back({from, PdaRefEdge{numbering_.number(rule), to}});
  }

  // Packs the edges by source state (counting sort) and fills `states` with views of them.
  void finish() {
    pack(eps_, eps_packed_, [](const std::pair<int32_t, int32_t>& e) { return e.second; });
    pack(bytes_, bytes_packed_, [](const std::pair<int32_t, PdaByteEdge>& e) { return e.second; });
    pack(refs_, refs_packed_, [](const std::pair<int32_t, PdaRefEdge>& e) { return e.second; });
    states.assign(num_states_, NfaState{});
    for (size_t s = 0; s < num_states_; ++s) {
      states[s].eps = view(eps_packed_, s);
      states[s].bytes = view(bytes_packed_, s);
      states[s].refs = view(refs_packed_, s);
    }
  }

  Fragment build(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kSequence:
        return build_sequence(e.children);
      case Expr::Kind::kAlternation: {
        int32_t s = add(), t = add();
        for (const Expr& c : e.children) {
          Fragment f = build(c);
          eps(s, f.start);
          eps(f.end, t);
        }
        return {s, t};
      }
      case Expr::Kind::kLiteral: {
        int32_t s = add();
        int32_t cur = s;
        for (char ch : e.text) {
          int32_t n = add();
          auto b = static_cast<uint8_t>(ch);
          byte(cur, b, b, n);
          cur = n;
        }
        return {s, cur};
      }
      case Expr::Kind::kCharClass: {
        int32_t s = add(), t = add();
        // Sequences with the same remaining bytes share the state before them (E1-EC and
        // EE-EF both continue with two 80-BF bytes): fewer subsets to determinise, and the
        // automaton has one state per distinct rest instead of one per sequence.
        suffix_states_.clear();
        for (CodePointRange r : e.ranges) {
          if (r.hi < 0x80) {
            // ASCII: one byte range (most classes of schema grammars, e.g. object-key tries).
            byte(s, static_cast<uint8_t>(r.lo), static_cast<uint8_t>(r.hi), t);
            continue;
          }
          for (const std::vector<ByteRange>& seq : utf8_sequences(r.lo, r.hi)) {
            int32_t next = t;
            for (size_t i = seq.size(); i-- > 1;) {
              const uint64_t key = suffix_key(seq, i, next);
              auto it = std::find_if(suffix_states_.begin(), suffix_states_.end(),
                                     [&](const auto& kv) { return kv.first == key; });
              if (it == suffix_states_.end()) {
                suffix_states_.emplace_back(key, add());
                it = suffix_states_.end() - 1;
                byte(it->second, seq[i].lo, seq[i].hi, next);
              }
              next = it->second;
            }
            byte(s, seq[0].lo, seq[0].hi, next);
          }
        }
        return {s, t};
      }
      case Expr::Kind::kRuleRef: {
        int32_t s = add(), t = add();
        ref(s, e.rule, t);
        return {s, t};
      }
      case Expr::Kind::kRepeat: {
        const Expr& item = e.children[0];
        int32_t s = add();
        int32_t cur = s;
        for (uint32_t i = 0; i < e.min; ++i) {
          Fragment f = build(item);
          eps(cur, f.start);
          cur = f.end;
        }
        if (e.max == Expr::kUnbounded) {
          Fragment f = build(item);
          eps(cur, f.start);
          eps(f.end, cur);
          return {s, cur};
        }
        // Nested optionals (x (x (x)?)?)? rather than x? x? x?: determinises without blow-up.
        int32_t t = add();
        for (uint32_t i = e.min; i < e.max; ++i) {
          Fragment f = build(item);
          eps(cur, f.start);
          eps(cur, t);
          cur = f.end;
        }
        eps(cur, t);
        return {s, t};
      }
    }
    return {add(), add()};
  }

  Fragment build_sequence(std::span<const Expr> items) {
    if (items.empty()) {
      int32_t s = add();
      return {s, s};
    }
    // Starts where the first item starts: no construction adds edges out of a fragment's
    // start, so it can be shared.
    Fragment first = build(items[0]);
    int32_t cur = first.end;
    for (size_t i = 1; i < items.size(); ++i) {
      Fragment f = build(items[i]);
      eps(cur, f.start);
      cur = f.end;
    }
    return {first.start, cur};
  }

  std::vector<NfaState> states;

 private:
  template <typename T>
  struct Packed {
    std::vector<uint32_t> offsets;  // per state + 1
    std::vector<T> items;
  };
  template <typename Edge, typename T, typename Get>
  void pack(const std::vector<Edge>& edges, Packed<T>& out, Get get) {
    out.offsets.assign(num_states_ + 1, 0);
    for (const Edge& e : edges) ++out.offsets[e.first + 1];
    for (size_t s = 0; s < num_states_; ++s) out.offsets[s + 1] += out.offsets[s];
    out.items.resize(edges.size());
    // Kept across rules (most rules are small: an allocation each was a cost of its own).
    next_.assign(out.offsets.begin(), out.offsets.end() - 1);
    // Keeps the insertion order per state (the determinizer does not depend on it, but tests
    // and error messages stay stable).
    for (const Edge& e : edges) out.items[next_[e.first]++] = get(e);
  }
  template <typename T>
  static std::span<const T> view(const Packed<T>& p, size_t s) {
    return std::span<const T>(p.items.data() + p.offsets[s], p.offsets[s + 1] - p.offsets[s]);
  }

  // The state reading seq[i] and then going to `next`: built from the back, so (byte range,
  // next state) identifies the rest of the sequence.
  static uint64_t suffix_key(const std::vector<ByteRange>& seq, size_t i, int32_t next) {
    return (static_cast<uint64_t>(seq[i].lo) << 40) | (static_cast<uint64_t>(seq[i].hi) << 32) |
           static_cast<uint32_t>(next);
  }

  RuleNumbering& numbering_;
  const std::string* rule_ = nullptr;
  std::vector<std::pair<uint64_t, int32_t>> suffix_states_;  // scratch of the char class case
  size_t num_states_ = 0;
  std::vector<std::pair<int32_t, int32_t>> eps_;
  std::vector<std::pair<int32_t, PdaByteEdge>> bytes_;
  std::vector<std::pair<int32_t, PdaRefEdge>> refs_;
  std::vector<uint32_t> next_;  // pack's scratch
  Packed<int32_t> eps_packed_;
  Packed<PdaByteEdge> bytes_packed_;
  Packed<PdaRefEdge> refs_packed_;
};

// Subset construction of one rule's NFA; appends the DFA states to `out` and returns its start.
// Subsets live in one flat pool and are found by hash, and all scratch buffers are reused:
// compile time is most of the time to first mask.
class Determinizer {
 public:
  explicit Determinizer(std::vector<PdaState>& out) : out_(out) {}

  // Appends the DFA of one rule's NFA; the scratch buffers are kept for the next rule.
  int32_t run(const NfaBuilder& nfa, NfaBuilder::Fragment frag, int32_t rule_id,
              const std::string& rule_name) {
    ns_ = &nfa.states;
    frag_ = frag;
    rule_id_ = rule_id;
    rule_name_ = &rule_name;
    if (stamp_.size() < ns_->size()) stamp_.resize(ns_->size(), 0);  // old stamps are < gen_
    pool_.clear();
    // Subsets hold a few NFA states each on average: sized once rather than grown by copies
    // into fresh memory (which, page by page, was most of the page faults of compiling).
    pool_.reserve(ns_->size() * 4);
    offsets_.clear();
    hashes_.clear();
    slots_.clear();
    base_ = static_cast<int32_t>(out_.size());
    seeds_.assign(1, frag_.start);
    int32_t start = intern_closure();
    for (size_t k = 0; k < offsets_.size(); ++k) expand(k);
    return merge_equivalent(start);
  }

 private:
  // Merges states with the same behaviour locally: equal finality and edges to the same
  // (merged) targets. Subsets of different NFA states can be equivalent: every node of an
  // object key's exclusion trie has its own copy of "one more character, then the rest of the
  // string", and without merging each copy's middle-of-UTF-8 states are positions of their own
  // (a classification walk each). One pass in reverse creation order: subset construction
  // creates a state before its successors, so most targets are final by the time they are
  // compared (loops are left alone). Returns the start's new id.
  int32_t merge_equivalent(int32_t start) {
    const size_t n = out_.size() - base_;
    rep_.resize(n);
    for (size_t k = 0; k < n; ++k) rep_[k] = static_cast<int32_t>(k);
    merge_slots_.assign(std::max<size_t>(64, std::bit_ceil(n * 2)), -1);
    const size_t mask = merge_slots_.size() - 1;
    bool merged_any = false;
    post_order(start - base_);
    for (int32_t k : order_) {
      PdaState& st = out_[base_ + k];
      remap_targets(st);
      uint64_t h = st.final ? 0x9E37u : 0x7F4Au;
      for (const PdaByteEdge& e : st.bytes) {
        h = (h ^
             ((uint64_t{e.lo} << 40) | (uint64_t{e.hi} << 32) | static_cast<uint32_t>(e.target))) *
            0x100000001B3ull;
      }
      for (const PdaRefEdge& r : st.refs) {
        h = (h ^ ((static_cast<uint64_t>(r.rule) << 32) | static_cast<uint32_t>(r.target))) *
            0x100000001B3ull;
      }
      h ^= h >> 31;
      size_t slot = (h * 0x9E3779B97F4A7C15ull) >> 20 & mask;
      for (; merge_slots_[slot] >= 0; slot = (slot + 1) & mask) {
        const PdaState& other = out_[base_ + merge_slots_[slot]];
        if (other.final == st.final && same_edges(other, st)) break;
      }
      if (merge_slots_[slot] >= 0) {
        rep_[k] = merge_slots_[slot];
        merged_any = true;
      } else {
        merge_slots_[slot] = static_cast<int32_t>(k);
      }
    }
    if (!merged_any) return start;
    // Renumber the kept states (in order) and drop the others.
    new_id_.assign(n, -1);
    int32_t kept = 0;
    for (size_t k = 0; k < n; ++k) {
      if (rep_[k] == static_cast<int32_t>(k)) new_id_[k] = base_ + kept++;
    }
    for (size_t k = 0; k < n; ++k) {
      if (rep_[k] != static_cast<int32_t>(k)) continue;
      PdaState& st = out_[base_ + k];
      remap_targets(st);
      for (PdaByteEdge& e : st.bytes) e.target = new_id_[e.target - base_];
      for (PdaRefEdge& r : st.refs) r.target = new_id_[r.target - base_];
      if (new_id_[k] != base_ + static_cast<int32_t>(k)) out_[new_id_[k]] = std::move(st);
    }
    out_.resize(base_ + kept);
    return new_id_[rep_[start - base_]];
  }

  // The rule's states (local ids) in DFS post-order from `start`: successors before the
  // states reaching them, except along loops.
  void post_order(int32_t start) {
    const size_t n = out_.size() - base_;
    order_.clear();
    visited_.assign(n, 0);
    stack_.assign(1, {start, 0});
    visited_[start] = 1;
    while (!stack_.empty()) {
      auto& [k, next] = stack_.back();
      const PdaState& st = out_[base_ + k];
      const size_t edges = st.bytes.size() + st.refs.size();
      if (next < edges) {
        int32_t t = (next < st.bytes.size() ? st.bytes[next].target
                                            : st.refs[next - st.bytes.size()].target) -
                    base_;
        ++next;
        if (!visited_[t]) {
          visited_[t] = 1;
          stack_.push_back({t, 0});
        }
        continue;
      }
      order_.push_back(k);
      stack_.pop_back();
    }
  }

  // Points edges at their targets' representatives, joining byte ranges that now meet.
  void remap_targets(PdaState& st) {
    auto rep = [&](int32_t t) { return base_ + rep_[t - base_]; };
    size_t w = 0;
    for (size_t i = 0; i < st.bytes.size(); ++i) {
      PdaByteEdge e = st.bytes[i];
      e.target = rep(e.target);
      if (w > 0 && st.bytes[w - 1].target == e.target && st.bytes[w - 1].hi + 1 == e.lo) {
        st.bytes[w - 1].hi = e.hi;
      } else {
        st.bytes[w++] = e;
      }
    }
    st.bytes.resize(w);
    for (PdaRefEdge& r : st.refs) r.target = rep(r.target);
  }

  static bool same_edges(const PdaState& a, const PdaState& b) {
    if (a.bytes.size() != b.bytes.size() || a.refs.size() != b.refs.size()) return false;
    for (size_t i = 0; i < a.bytes.size(); ++i) {
      if (a.bytes[i].lo != b.bytes[i].lo || a.bytes[i].hi != b.bytes[i].hi ||
          a.bytes[i].target != b.bytes[i].target) {
        return false;
      }
    }
    for (size_t i = 0; i < a.refs.size(); ++i) {
      if (a.refs[i].rule != b.refs[i].rule || a.refs[i].target != b.refs[i].target) return false;
    }
    return true;
  }

  // Closure of seeds_ into set_ (sorted, only states that matter), then its DFA id.
  int32_t intern_closure() {
    set_.clear();
    if (seeds_.size() == 1 && (*ns_)[seeds_[0]].eps.empty()) {
      // One state without epsilon edges (inside literals and characters): its own closure.
      const int32_t s = seeds_[0];
      seeds_.clear();
      const NfaState& st = (*ns_)[s];
      if (!st.bytes.empty() || !st.refs.empty() || s == frag_.end) set_.push_back(s);
    } else {
      close_seeds();
    }
    uint64_t h = set_.size();
    for (int32_t x : set_) h = (h ^ static_cast<uint64_t>(x)) * 0x100000001B3ull;
    h = (h ^ (h >> 32)) * 0x9E3779B97F4A7C15ull;  // the table uses the low bits
    h ^= h >> 32;
    if ((offsets_.size() + 1) * 2 > slots_.size()) grow_slots();
    size_t slot = h & (slots_.size() - 1);
    for (; slots_[slot] >= 0; slot = (slot + 1) & (slots_.size() - 1)) {
      const auto k = static_cast<size_t>(slots_[slot]);
      if (hashes_[k] == h && subset_end(k) - offsets_[k] == set_.size() &&
          std::equal(set_.begin(), set_.end(), pool_.begin() + offsets_[k])) {
        return base_ + static_cast<int32_t>(k);
      }
    }
    if (offsets_.size() >= kMaxDfaStatesPerRule) {
      throw GrammarError("rule '" + *rule_name_ + "' is too large (over " +
                         std::to_string(kMaxDfaStatesPerRule) + " automaton states)");
    }
    if (pool_.size() + set_.size() > kMaxDfaMembersPerRule) {
      throw GrammarError("rule '" + *rule_name_ +
                         "' is too large (its automaton states hold over " +
                         std::to_string(kMaxDfaMembersPerRule) + " NFA states in all)");
    }
    size_t k = offsets_.size();
    offsets_.push_back(pool_.size());
    pool_.insert(pool_.end(), set_.begin(), set_.end());
    hashes_.push_back(h);
    slots_[slot] = static_cast<int32_t>(k);
    PdaState st;
    st.rule = rule_id_;
    out_.push_back(std::move(st));
    return base_ + static_cast<int32_t>(k);
  }

  // Open addressing from subset hash to subset id (-1: empty), at most half full.
  void grow_slots() {
    slots_.assign(std::max<size_t>(slots_.size() * 2, 64), -1);
    for (size_t k = 0; k < hashes_.size(); ++k) {
      size_t slot = hashes_[k] & (slots_.size() - 1);
      while (slots_[slot] >= 0) slot = (slot + 1) & (slots_.size() - 1);
      slots_[slot] = static_cast<int32_t>(k);
    }
  }

  // The epsilon closure of seeds_ into set_ (sorted, only states that matter).
  void close_seeds() {
    if (++gen_ == 0) {
      std::fill(stamp_.begin(), stamp_.end(), 0);
      gen_ = 1;
    }
    while (!seeds_.empty()) {
      int32_t s = seeds_.back();
      seeds_.pop_back();
      if (stamp_[s] == gen_) continue;
      stamp_[s] = gen_;
      const NfaState& st = (*ns_)[s];
      if (!st.bytes.empty() || !st.refs.empty() || s == frag_.end) set_.push_back(s);
      for (int32_t t : st.eps) seeds_.push_back(t);
    }
    std::sort(set_.begin(), set_.end());
  }

  size_t subset_end(size_t k) const {
    return k + 1 < offsets_.size() ? offsets_[k + 1] : pool_.size();
  }

  void expand(size_t k) {
    members_.assign(pool_.begin() + offsets_[k], pool_.begin() + subset_end(k));
    bool final = std::binary_search(members_.begin(), members_.end(), frag_.end);
    bounds_.clear();
    refs_.clear();
    all_edges_.clear();
    for (int32_t s : members_) {
      all_edges_.insert(all_edges_.end(), (*ns_)[s].bytes.begin(), (*ns_)[s].bytes.end());
      for (const PdaRefEdge& r : (*ns_)[s].refs) refs_.push_back(r);
    }
    std::sort(all_edges_.begin(), all_edges_.end(),
              [](const PdaByteEdge& a, const PdaByteEdge& b) { return a.lo < b.lo; });
    bool disjoint = true;
    for (size_t i = 1; i < all_edges_.size() && disjoint; ++i) {
      disjoint = all_edges_[i - 1].hi < all_edges_[i].lo;
    }
    std::vector<PdaByteEdge> edges;
    if (disjoint) {
      // The common case (literals, classes, alternatives with distinct first bytes): each
      // edge's target alone, without splitting the byte range.
      for (const PdaByteEdge& e : all_edges_) {
        seeds_.assign(1, e.target);
        int32_t t = intern_closure();
        if (!edges.empty() && edges.back().target == t && edges.back().hi + 1 == e.lo) {
          edges.back().hi = e.hi;
        } else {
          edges.push_back({e.lo, e.hi, t});
        }
      }
    }
    for (const PdaByteEdge& e : disjoint ? std::span<const PdaByteEdge>() : all_edges_) {
      bounds_.push_back(e.lo);
      bounds_.push_back(e.hi + 1);
    }
    std::sort(bounds_.begin(), bounds_.end());
    bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
    for (size_t i = 0; i + 1 < bounds_.size(); ++i) {
      int lo = bounds_[i], hi = bounds_[i + 1] - 1;
      seeds_.clear();
      for (int32_t s : members_) {
        for (const PdaByteEdge& e : (*ns_)[s].bytes) {
          if (e.lo <= lo && hi <= e.hi) seeds_.push_back(e.target);
        }
      }
      if (seeds_.empty()) continue;
      int32_t t = intern_closure();
      if (!edges.empty() && edges.back().target == t && edges.back().hi + 1 == lo) {
        edges.back().hi = static_cast<uint8_t>(hi);
      } else {
        edges.push_back({static_cast<uint8_t>(lo), static_cast<uint8_t>(hi), t});
      }
    }
    std::sort(refs_.begin(), refs_.end(), [](const PdaRefEdge& a, const PdaRefEdge& b) {
      return a.rule != b.rule ? a.rule < b.rule : a.target < b.target;
    });
    std::vector<PdaRefEdge> refs;
    for (size_t i = 0; i < refs_.size();) {
      size_t j = i;
      seeds_.clear();
      while (j < refs_.size() && refs_[j].rule == refs_[i].rule)
        seeds_.push_back(refs_[j++].target);
      refs.push_back({refs_[i].rule, intern_closure()});
      i = j;
    }
    PdaState& st = out_[base_ + k];
    st.final = final;
    st.bytes = std::move(edges);
    st.refs = std::move(refs);
  }

  const std::vector<NfaState>* ns_ = nullptr;
  NfaBuilder::Fragment frag_{};
  int32_t rule_id_ = 0;
  const std::string* rule_name_ = nullptr;
  std::vector<PdaState>& out_;
  int32_t base_ = 0;
  std::vector<uint32_t> stamp_;
  uint32_t gen_ = 0;
  std::vector<int32_t> pool_;     // all subsets, back to back
  std::vector<size_t> offsets_;   // subset k starts at pool_[offsets_[k]]
  std::vector<uint64_t> hashes_;  // per subset
  std::vector<int32_t> slots_;
  std::vector<int32_t> seeds_, set_, members_;
  std::vector<int> bounds_;
  std::vector<PdaByteEdge> all_edges_;
  std::vector<PdaRefEdge> refs_;
  // merge_equivalent's scratch.
  std::vector<int32_t> rep_, new_id_, merge_slots_, order_;
  std::vector<uint8_t> visited_;
  std::vector<std::pair<int32_t, size_t>> stack_;
};

// Lists of ints per key, packed in one array: count() every item, allocate(), then add() them.
class PackedLists {
 public:
  explicit PackedLists(size_t keys) : offsets_(keys + 1, 0) {}
  void count(int32_t key) { ++offsets_[key + 1]; }
  void allocate() {
    for (size_t k = 1; k < offsets_.size(); ++k) offsets_[k] += offsets_[k - 1];
    items_.resize(offsets_.back());
    fill_.assign(offsets_.begin(), offsets_.end() - 1);
  }
  void add(int32_t key, int32_t item) { items_[fill_[key]++] = item; }
  std::span<const int32_t> of(int32_t key) const {
    return {items_.data() + offsets_[key], offsets_[key + 1] - offsets_[key]};
  }

 private:
  std::vector<uint32_t> offsets_, fill_;
  std::vector<int32_t> items_;
};

}  // namespace

PushdownAutomaton PushdownAutomaton::build(const Grammar& grammar) {
  const std::vector<GrammarRule>& rules = grammar.rules();
  RepeatHoisting hoisting(rules);
  // Only rules reachable from the root are lowered.
  RuleNumbering numbering(rules.size(), grammar.root());
  PushdownAutomaton pda;
  pda.root = 0;
  // Schema grammars average a few dozen states per rule: growing the vector from empty moved
  // every state several times (and touched fresh pages each time).
  pda.states.reserve(std::min<size_t>(rules.size() * 64, size_t{1} << 20));
  NfaBuilder nfa(numbering);
  Determinizer determinizer(pda.states);
  for (size_t i = 0; i < numbering.grammar_rules().size(); ++i) {
    const GrammarRule& rule = hoisting.rule(numbering.grammar_rules()[i]);
    const auto rule_id = static_cast<int32_t>(i);
    auto lower = [&](std::span<const Expr> items) {
      nfa.reset(rule.name);
      NfaBuilder::Fragment frag = nfa.build_sequence(items);
      nfa.finish();
      return determinizer.run(nfa, frag, rule_id, rule.name);
    };
    // A long repetition: its item and the rest are determinised once, then copies stamped.
    std::optional<int32_t> start;
    if (std::span<const Expr> seq = stamped_sequence(rule.body); !seq.empty()) {
      const size_t tail_base = pda.states.size();
      const int32_t tail_start = lower(seq.subspan(1));
      const size_t item_base = pda.states.size();
      const int32_t item_start = lower(seq.first(1).front().children);
      start = stamp_repeat(pda.states, item_base, item_start, seq[0].min, seq[0].max, tail_start);
      if (!start) pda.states.resize(tail_base);
    }
    if (!start) start = lower(std::span<const Expr>(&rule.body, 1));
    pda.rules.push_back(PdaRule{rule.name, *start, false});
  }

  // Productive rules (match at least one string) and co-reachable states: a worklist over
  // reverse edges, linear in the automaton's size.
  size_t n = pda.states.size();
  // Bytes rather than vector<bool>: these are read in the innermost loops.
  std::vector<uint8_t> productive(pda.rules.size(), 0);
  std::vector<uint8_t> live(n, 0);
  // Predecessors and users of each rule, packed (one allocation each, not one per state).
  PackedLists preds(n), rule_users(pda.rules.size());
  for (size_t s = 0; s < n; ++s) {
    const PdaState& st = pda.states[s];
    for (const PdaByteEdge& e : st.bytes) preds.count(e.target);
    for (const PdaRefEdge& r : st.refs) {
      preds.count(r.target);
      rule_users.count(r.rule);
    }
  }
  preds.allocate();
  rule_users.allocate();
  std::vector<int32_t> rule_of_start(n, -1);
  for (size_t r = 0; r < pda.rules.size(); ++r)
    rule_of_start[pda.rules[r].start] = static_cast<int32_t>(r);
  std::vector<int32_t> work;
  for (size_t s = 0; s < n; ++s) {
    const PdaState& st = pda.states[s];
    for (const PdaByteEdge& e : st.bytes) preds.add(e.target, static_cast<int32_t>(s));
    for (const PdaRefEdge& r : st.refs) {
      preds.add(r.target, static_cast<int32_t>(s));
      rule_users.add(r.rule, static_cast<int32_t>(s));
    }
    if (st.final) {
      live[s] = true;
      work.push_back(static_cast<int32_t>(s));
    }
  }
  auto check = [&](int32_t s) {
    if (live[s]) return;
    const PdaState& st = pda.states[s];
    bool l = false;
    for (const PdaByteEdge& e : st.bytes) l = l || live[e.target];
    for (const PdaRefEdge& r : st.refs) l = l || (productive[r.rule] && live[r.target]);
    if (l) {
      live[s] = true;
      work.push_back(s);
    }
  };
  while (!work.empty()) {
    int32_t s = work.back();
    work.pop_back();
    if (int32_t r = rule_of_start[s]; r >= 0 && !productive[r]) {
      productive[r] = true;
      for (int32_t u : rule_users.of(r)) check(u);
    }
    for (int32_t p : preds.of(s)) check(p);
  }
  if (!productive[pda.root]) {
    throw GrammarError("grammar matches no string (rule '" + pda.rules[pda.root].name + "')");
  }
  // Usually every state is live and every rule productive: then no edge goes (the walk over
  // every state's edges was a tenth of this function).
  const bool all_live =
      std::all_of(live.begin(), live.end(), [](uint8_t l) { return l; }) &&
      std::all_of(productive.begin(), productive.end(), [](uint8_t p) { return p; });
  for (size_t s = 0; s < n && !all_live; ++s) {
    PdaState& st = pda.states[s];
    std::erase_if(st.bytes, [&](const PdaByteEdge& e) { return !live[e.target]; });
    std::erase_if(st.refs,
                  [&](const PdaRefEdge& r) { return !productive[r.rule] || !live[r.target]; });
  }

  // Nullable rules: the start reaches a final state through nullable rule references only.
  std::vector<uint8_t> nullable(pda.rules.size(), 0);
  std::vector<uint32_t> seen(n, 0);  // == visit: reached in the current walk
  uint32_t visit = 0;
  std::vector<int32_t> todo;
  auto reach_via_nullable = [&](int32_t start, const auto& on_state) {
    ++visit;
    todo.assign(1, start);
    seen[start] = visit;
    while (!todo.empty()) {
      int32_t s = todo.back();
      todo.pop_back();
      on_state(s);
      for (const PdaRefEdge& r : pda.states[s].refs) {
        if (nullable[r.rule] && seen[r.target] != visit) {
          seen[r.target] = visit;
          todo.push_back(r.target);
        }
      }
    }
  };
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t r = 0; r < pda.rules.size(); ++r) {
      if (nullable[r]) continue;
      bool reaches_final = false;
      reach_via_nullable(pda.rules[r].start,
                         [&](int32_t s) { reaches_final |= pda.states[s].final; });
      if (reaches_final) {
        nullable[r] = true;
        changed = true;
      }
    }
  }
  for (size_t r = 0; r < pda.rules.size(); ++r) pda.rules[r].nullable = nullable[r];

  // Left recursion would make the stack grow without consuming input: reject it.
  std::vector<std::vector<int32_t>> left_calls(pda.rules.size());
  for (size_t r = 0; r < pda.rules.size(); ++r) {
    reach_via_nullable(pda.rules[r].start, [&](int32_t s) {
      for (const PdaRefEdge& e : pda.states[s].refs) left_calls[r].push_back(e.rule);
    });
  }
  // Depth-first with an explicit stack: a chain of rules can be as long as the grammar.
  std::vector<int> color(pda.rules.size(), 0);
  struct Visit {
    int32_t rule;
    size_t next_call;
  };
  std::vector<Visit> path;
  for (size_t root = 0; root < pda.rules.size(); ++root) {
    if (color[root] != 0) continue;
    color[root] = 1;
    path.push_back({static_cast<int32_t>(root), 0});
    while (!path.empty()) {
      Visit& v = path.back();
      if (v.next_call == left_calls[v.rule].size()) {
        color[v.rule] = 2;
        path.pop_back();
        continue;
      }
      const int32_t q = left_calls[v.rule][v.next_call++];
      if (color[q] == 1) {
        std::string cycle;
        auto it =
            std::find_if(path.begin(), path.end(), [&](const Visit& p) { return p.rule == q; });
        for (; it != path.end(); ++it) cycle += pda.rules[it->rule].name + " -> ";
        throw GrammarError("left recursion is not supported: " + cycle + pda.rules[q].name);
      }
      if (color[q] == 0) {
        color[q] = 1;
        path.push_back({q, 0});
      }
    }
  }
  return pda;
}

}  // namespace agentrt::grammars
