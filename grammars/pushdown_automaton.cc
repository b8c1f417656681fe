#include "grammars/pushdown_automaton.h"

#include <algorithm>
#include <functional>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "grammars/grammar.h"
#include "grammars/utf8.h"

namespace agentrt::grammars {
namespace {

// Limits that keep hostile grammars from exhausting memory; errors name them.
constexpr size_t kMaxNfaStates = 4'000'000;
constexpr size_t kMaxDfaStatesPerRule = 400'000;

// Rough automaton size of an expression, for deciding what to copy.
size_t estimated_size(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::kLiteral:
      return e.text.size() + 1;
    case Expr::Kind::kCharClass:
      return 2 + 3 * e.ranges.size();
    case Expr::Kind::kRuleRef:
      return 2;
    case Expr::Kind::kRepeat: {
      size_t item = estimated_size(e.children[0]);
      size_t copies = e.max == Expr::kUnbounded ? e.min + 1 : e.max;
      return std::min<size_t>(item * std::max<size_t>(copies, 1), 1u << 30);
    }
    default: {
      size_t n = 2;
      for (const Expr& c : e.children) n = std::min<size_t>(n + estimated_size(c), 1u << 30);
      return n;
    }
  }
}

// Moves the bodies of repeated complex expressions into rules of their own, so that a bounded
// repetition copies one rule reference instead of the whole sub-automaton.
class RepeatHoister {
 public:
  explicit RepeatHoister(std::vector<GrammarRule>& rules) : rules_(rules) {}
  void run() {
    for (size_t i = 0; i < rules_.size(); ++i) {
      Expr body = std::move(rules_[i].body);
      visit(body, rules_[i].name);
      rules_[i].body = std::move(body);
    }
  }

 private:
  void visit(Expr& e, const std::string& owner) {
    for (Expr& c : e.children) visit(c, owner);
    if (e.kind != Expr::Kind::kRepeat) return;
    Expr& item = e.children[0];
    uint64_t copies = e.max == Expr::kUnbounded ? uint64_t{e.min} + 1 : e.max;
    // Small items are copied inline (their states then need no rule push per repetition, which
    // keeps matching fast); large ones become a rule referenced from each copy.
    size_t item_size = estimated_size(item);
    if (copies <= 1 || item.kind == Expr::Kind::kRuleRef ||
        (item_size <= 512 && item_size * copies <= 400000)) {
      return;
    }
    std::string name = owner + "_rep" + std::to_string(counter_++);
    rules_.push_back(GrammarRule{name, std::move(item)});
    item = Expr::rule_ref(static_cast<int32_t>(rules_.size() - 1));
  }
  std::vector<GrammarRule>& rules_;
  int counter_ = 0;
};

struct NfaState {
  std::vector<int32_t> eps;
  std::vector<PdaByteEdge> bytes;
  std::vector<PdaRefEdge> refs;
};

class NfaBuilder {
 public:
  explicit NfaBuilder(const std::string& rule) : rule_(rule) {}

  struct Fragment {
    int32_t start, end;
  };

  int32_t add() {
    if (states.size() >= kMaxNfaStates) {
      throw GrammarError("rule '" + rule_ + "' is too large (over " +
                         std::to_string(kMaxNfaStates) + " automaton states)");
    }
    states.emplace_back();
    return static_cast<int32_t>(states.size() - 1);
  }

  Fragment build(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kSequence: {
        int32_t s = add();
        int32_t cur = s;
        for (const Expr& c : e.children) {
          Fragment f = build(c);
          states[cur].eps.push_back(f.start);
          cur = f.end;
        }
        return {s, cur};
      }
      case Expr::Kind::kAlternation: {
        int32_t s = add(), t = add();
        for (const Expr& c : e.children) {
          Fragment f = build(c);
          states[s].eps.push_back(f.start);
          states[f.end].eps.push_back(t);
        }
        return {s, t};
      }
      case Expr::Kind::kLiteral: {
        int32_t s = add();
        int32_t cur = s;
        for (char ch : e.text) {
          int32_t n = add();
          auto b = static_cast<uint8_t>(ch);
          states[cur].bytes.push_back({b, b, n});
          cur = n;
        }
        return {s, cur};
      }
      case Expr::Kind::kCharClass: {
        int32_t s = add(), t = add();
        for (CodePointRange r : e.ranges) {
          for (const std::vector<ByteRange>& seq : utf8_sequences(r.lo, r.hi)) {
            int32_t cur = s;
            for (size_t i = 0; i < seq.size(); ++i) {
              int32_t n = i + 1 == seq.size() ? t : add();
              states[cur].bytes.push_back({seq[i].lo, seq[i].hi, n});
              cur = n;
            }
          }
        }
        return {s, t};
      }
      case Expr::Kind::kRuleRef: {
        int32_t s = add(), t = add();
        states[s].refs.push_back({e.rule, t});
        return {s, t};
      }
      case Expr::Kind::kRepeat: {
        const Expr& item = e.children[0];
        int32_t s = add();
        int32_t cur = s;
        for (uint32_t i = 0; i < e.min; ++i) {
          Fragment f = build(item);
          states[cur].eps.push_back(f.start);
          cur = f.end;
        }
        if (e.max == Expr::kUnbounded) {
          Fragment f = build(item);
          states[cur].eps.push_back(f.start);
          states[f.end].eps.push_back(cur);
          return {s, cur};
        }
        // Nested optionals (x (x (x)?)?)? rather than x? x? x?: determinises without blow-up.
        int32_t t = add();
        for (uint32_t i = e.min; i < e.max; ++i) {
          Fragment f = build(item);
          states[cur].eps.push_back(f.start);
          states[cur].eps.push_back(t);
          cur = f.end;
        }
        states[cur].eps.push_back(t);
        return {s, t};
      }
    }
    return {add(), add()};
  }

  std::vector<NfaState> states;

 private:
  const std::string& rule_;
};

struct VectorHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    size_t h = v.size();
    for (int32_t x : v) h = h * 1000003u ^ static_cast<size_t>(x);
    return h;
  }
};

// Subset construction of one rule's NFA; appends the DFA states to `out` and returns its start.
int32_t determinize(const NfaBuilder& nfa, NfaBuilder::Fragment frag, int32_t rule_id,
                    const std::string& rule_name, std::vector<PdaState>& out) {
  const std::vector<NfaState>& ns = nfa.states;
  std::vector<uint32_t> stamp(ns.size(), 0);
  uint32_t gen = 0;
  auto closure = [&](std::vector<int32_t> seeds) {
    ++gen;
    std::vector<int32_t> result;
    while (!seeds.empty()) {
      int32_t s = seeds.back();
      seeds.pop_back();
      if (stamp[s] == gen) continue;
      stamp[s] = gen;
      result.push_back(s);
      for (int32_t t : ns[s].eps) seeds.push_back(t);
    }
    // Only states with outgoing symbols or the end distinguish subsets.
    std::erase_if(result, [&](int32_t s) {
      return ns[s].bytes.empty() && ns[s].refs.empty() && s != frag.end;
    });
    std::sort(result.begin(), result.end());
    return result;
  };
  std::unordered_map<std::vector<int32_t>, int32_t, VectorHash> ids;
  std::vector<std::vector<int32_t>> sets;
  auto intern = [&](std::vector<int32_t> set) {
    auto it = ids.find(set);
    if (it != ids.end()) return it->second;
    if (sets.size() >= kMaxDfaStatesPerRule) {
      throw GrammarError("rule '" + rule_name + "' is too large (over " +
                         std::to_string(kMaxDfaStatesPerRule) + " automaton states)");
    }
    int32_t id = static_cast<int32_t>(out.size());
    ids.emplace(set, id);
    sets.push_back(std::move(set));
    PdaState st;
    st.rule = rule_id;
    out.push_back(std::move(st));
    return id;
  };
  int32_t base = static_cast<int32_t>(out.size());
  int32_t start = intern(closure({frag.start}));
  for (size_t k = 0; k < sets.size(); ++k) {
    std::vector<int32_t> set = sets[k];
    int32_t id = base + static_cast<int32_t>(k);
    bool final = std::binary_search(set.begin(), set.end(), frag.end);
    // Byte edges: split into elementary intervals.
    std::vector<int> bounds;
    std::map<int32_t, std::vector<int32_t>> ref_targets;
    for (int32_t s : set) {
      for (const PdaByteEdge& e : ns[s].bytes) {
        bounds.push_back(e.lo);
        bounds.push_back(e.hi + 1);
      }
      for (const PdaRefEdge& r : ns[s].refs) ref_targets[r.rule].push_back(r.target);
    }
    std::sort(bounds.begin(), bounds.end());
    bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
    std::vector<PdaByteEdge> edges;
    for (size_t i = 0; i + 1 < bounds.size(); ++i) {
      int lo = bounds[i], hi = bounds[i + 1] - 1;
      std::vector<int32_t> targets;
      for (int32_t s : set) {
        for (const PdaByteEdge& e : ns[s].bytes) {
          if (e.lo <= lo && hi <= e.hi) targets.push_back(e.target);
        }
      }
      if (targets.empty()) continue;
      int32_t t = intern(closure(std::move(targets)));
      if (!edges.empty() && edges.back().target == t && edges.back().hi + 1 == lo) {
        edges.back().hi = static_cast<uint8_t>(hi);
      } else {
        edges.push_back({static_cast<uint8_t>(lo), static_cast<uint8_t>(hi), t});
      }
    }
    std::vector<PdaRefEdge> refs;
    for (auto& [rule, targets] : ref_targets) refs.push_back({rule, intern(closure(targets))});
    out[id].final = final;
    out[id].bytes = std::move(edges);
    out[id].refs = std::move(refs);
  }
  return start;
}

void collect_refs(const Expr& e, std::vector<int32_t>& out) {
  if (e.kind == Expr::Kind::kRuleRef) out.push_back(e.rule);
  for (const Expr& c : e.children) collect_refs(c, out);
}

}  // namespace

PushdownAutomaton PushdownAutomaton::build(const Grammar& grammar) {
  std::vector<GrammarRule> rules = grammar.rules();
  RepeatHoister(rules).run();

  // Only rules reachable from the root are lowered.
  std::vector<int32_t> pda_index(rules.size(), -1);
  std::vector<int32_t> order{grammar.root()};
  pda_index[grammar.root()] = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    std::vector<int32_t> refs;
    collect_refs(rules[order[i]].body, refs);
    for (int32_t r : refs) {
      if (pda_index[r] < 0) {
        pda_index[r] = static_cast<int32_t>(order.size());
        order.push_back(r);
      }
    }
  }

  PushdownAutomaton pda;
  pda.root = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const GrammarRule& rule = rules[order[i]];
    NfaBuilder nfa(rule.name);
    NfaBuilder::Fragment frag = nfa.build(rule.body);
    for (NfaState& s : nfa.states) {
      for (PdaRefEdge& r : s.refs) r.rule = pda_index[r.rule];
    }
    int32_t start = determinize(nfa, frag, static_cast<int32_t>(i), rule.name, pda.states);
    pda.rules.push_back(PdaRule{rule.name, start, false});
  }

  // Productive rules (match at least one string) and co-reachable states, to a fixed point.
  size_t n = pda.states.size();
  std::vector<bool> productive(pda.rules.size(), false);
  std::vector<bool> live(n, false);
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t s = 0; s < n; ++s) {
      if (live[s]) continue;
      const PdaState& st = pda.states[s];
      bool l = st.final;
      for (const PdaByteEdge& e : st.bytes) l = l || live[e.target];
      for (const PdaRefEdge& r : st.refs) l = l || (productive[r.rule] && live[r.target]);
      if (l) {
        live[s] = true;
        changed = true;
      }
    }
    for (size_t r = 0; r < pda.rules.size(); ++r) {
      if (!productive[r] && live[pda.rules[r].start]) {
        productive[r] = true;
        changed = true;
      }
    }
  }
  if (!productive[pda.root]) {
    throw GrammarError("grammar matches no string (rule '" + pda.rules[pda.root].name + "')");
  }
  for (PdaState& st : pda.states) {
    std::erase_if(st.bytes, [&](const PdaByteEdge& e) { return !live[e.target]; });
    std::erase_if(st.refs,
                  [&](const PdaRefEdge& r) { return !productive[r.rule] || !live[r.target]; });
  }

  // Nullable rules: the start reaches a final state through nullable rule references only.
  std::vector<bool> nullable(pda.rules.size(), false);
  auto reach_via_nullable = [&](int32_t start, const std::function<void(int32_t)>& on_state) {
    std::vector<int32_t> todo{start};
    std::unordered_set<int32_t> seen{start};
    while (!todo.empty()) {
      int32_t s = todo.back();
      todo.pop_back();
      on_state(s);
      for (const PdaRefEdge& r : pda.states[s].refs) {
        if (nullable[r.rule] && seen.insert(r.target).second) todo.push_back(r.target);
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
  std::vector<int> color(pda.rules.size(), 0);
  std::vector<int32_t> path;
  std::function<void(int32_t)> dfs = [&](int32_t r) {
    color[r] = 1;
    path.push_back(r);
    for (int32_t q : left_calls[r]) {
      if (color[q] == 1) {
        std::string cycle;
        auto it = std::find(path.begin(), path.end(), q);
        for (; it != path.end(); ++it) cycle += pda.rules[*it].name + " -> ";
        throw GrammarError("left recursion is not supported: " + cycle + pda.rules[q].name);
      }
      if (color[q] == 0) dfs(q);
    }
    path.pop_back();
    color[r] = 2;
  };
  for (size_t r = 0; r < pda.rules.size(); ++r) {
    if (color[r] == 0) dfs(static_cast<int32_t>(r));
  }
  return pda;
}

}  // namespace agentrt::grammars
