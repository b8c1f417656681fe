#include "grammars/repeat_lowering.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>

namespace agentrt::grammars {
namespace {

// Repetitions of at least this many copies, and this much automaton in all, are stamped; below
// that, determinising inline copies is cheap and saves a rule (and its push while matching).
constexpr uint64_t kMinStampedCopies = 16;
constexpr uint64_t kMinStampedSize = 1024;
// As the determinizer's limit per rule (a stamped rule is one rule's automaton).
constexpr uint64_t kMaxStampedStates = 400'000;

uint64_t copies_of(const Expr& e) {
  return e.max == Expr::kUnbounded ? uint64_t{e.min} + 1 : e.max;
}

// Rough automaton size of an expression, for deciding what to copy.
size_t estimated_size(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::kLiteral:
      return e.text.size() + 1;
    case Expr::Kind::kCharClass:
      return 2 + 3 * e.ranges.size();
    case Expr::Kind::kRuleRef:
      return 2;
    case Expr::Kind::kRepeat:
      return std::min<size_t>(estimated_size(e.children[0]) * std::max<uint64_t>(copies_of(e), 1),
                              1u << 30);
    default: {
      size_t n = 2;
      for (const Expr& c : e.children) n = std::min<size_t>(n + estimated_size(c), 1u << 30);
      return n;
    }
  }
}

// Long enough to be stamped (stamp_repeat).
bool is_stamped_repeat(const Expr& e) {
  if (e.kind != Expr::Kind::kRepeat) return false;
  const uint64_t copies = copies_of(e);
  return copies >= kMinStampedCopies && estimated_size(e.children[0]) * copies >= kMinStampedSize;
}

// Small items are copied inline (their states then need no rule push per repetition, which
// keeps matching fast); large ones become a rule referenced from each copy.
bool hoists_item(const Expr& e) {
  if (e.kind != Expr::Kind::kRepeat) return false;
  const Expr& item = e.children[0];
  const uint64_t copies = copies_of(e);
  // Sized only when it matters: most repetitions are `x*`, and sizing each one walked the
  // subtree below it again for every repetition above it.
  if (copies <= 1 || item.kind == Expr::Kind::kRuleRef) return false;
  const size_t item_size = estimated_size(item);
  return !(item_size <= 512 && item_size * copies <= 400000);
}

// Where an expression sits: a rule's whole body, an element of a sequence, or elsewhere.
enum class Place { kBody, kInSequence, kElsewhere };

// Identifies a repetition by its whole content, so that equal ones share one stamped rule.
void append_key(const Expr& e, std::string& out) {
  out += static_cast<char>('0' + static_cast<int>(e.kind));
  switch (e.kind) {
    case Expr::Kind::kLiteral:
      out += std::to_string(e.text.size()) + ':' + e.text;
      break;
    case Expr::Kind::kCharClass:
      for (CodePointRange r : e.ranges)
        out += std::to_string(r.lo) + '-' + std::to_string(r.hi) + ',';
      break;
    case Expr::Kind::kRuleRef:
      out += std::to_string(e.rule);
      break;
    case Expr::Kind::kRepeat:
      out += std::to_string(e.min) + ',' + std::to_string(e.max);
      break;
    default:
      break;
  }
  out += '(';
  for (const Expr& c : e.children) append_key(c, out);
  out += ')';
}

bool hoisting_needed(const Expr& e, Place place) {
  if (hoists_item(e) || (place == Place::kElsewhere && is_stamped_repeat(e))) return true;
  const Place child_place =
      e.kind == Expr::Kind::kSequence ? Place::kInSequence : Place::kElsewhere;
  for (size_t k = 0; k < e.children.size(); ++k) {
    if (e.kind == Expr::Kind::kSequence && is_stamped_repeat(e.children[k]) &&
        !(place == Place::kBody && k == 0)) {
      return true;
    }
    if (hoisting_needed(e.children[k], child_place)) return true;
  }
  return false;
}

}  // namespace

class RepeatHoisting::Hoister {
 public:
  Hoister(std::deque<GrammarRule>& added, size_t base) : added_(added), base_(base) {}

  // Rewrites `body` (of the rule named `owner`), appending the rules it makes.
  void rewrite(Expr& body, const std::string& owner) { visit(body, owner, Place::kBody); }

 private:
  static Place child_place(const Expr& parent) {
    return parent.kind == Expr::Kind::kSequence ? Place::kInSequence : Place::kElsewhere;
  }

  void visit(Expr& e, const std::string& owner, Place place) {
    for (Expr& c : e.children) visit(c, owner, child_place(e));
    if (hoists_item(e)) e.children[0] = Expr::rule_ref(add_rule(owner, std::move(e.children[0])));
    if (e.kind == Expr::Kind::kSequence) {
      // Right to left, so that a repetition's rest holds the later ones as rule references.
      for (size_t k = e.children.size(); k-- > 0;) {
        if (!is_stamped_repeat(e.children[k]) || (place == Place::kBody && k == 0)) continue;
        std::vector<Expr> rest(std::make_move_iterator(e.children.begin() + k),
                               std::make_move_iterator(e.children.end()));
        e.children.resize(k);
        e.children.push_back(Expr::rule_ref(stamped_rule(owner, Expr::sequence(std::move(rest)))));
      }
    } else if (place == Place::kElsewhere && is_stamped_repeat(e)) {
      e = Expr::rule_ref(stamped_rule(owner, std::move(e)));
    }
  }

  int32_t stamped_rule(const std::string& owner, Expr body) {
    std::string key;
    append_key(body, key);
    auto [it, inserted] = stamped_.try_emplace(std::move(key), -1);
    if (inserted) it->second = add_rule(owner, std::move(body));
    return it->second;
  }

  int32_t add_rule(const std::string& owner, Expr body) {
    added_.push_back(GrammarRule{owner + "_rep" + std::to_string(counter_++), std::move(body)});
    return static_cast<int32_t>(base_ + added_.size() - 1);
  }

  std::deque<GrammarRule>& added_;  // numbered from base_
  size_t base_;
  std::unordered_map<std::string, int32_t> stamped_;  // body's key → its rule
  int counter_ = 0;
};

std::span<const Expr> stamped_sequence(const Expr& body) {
  if (is_stamped_repeat(body)) return {&body, 1};
  if (body.kind == Expr::Kind::kSequence && !body.children.empty() &&
      is_stamped_repeat(body.children[0])) {
    return body.children;
  }
  return {};
}

RepeatHoisting::RepeatHoisting(const std::vector<GrammarRule>& rules)
    : rules_(rules), hoister_(std::make_unique<Hoister>(added_, rules.size())) {}

RepeatHoisting::~RepeatHoisting() = default;

const GrammarRule& RepeatHoisting::rule(int32_t index) {
  const auto i = static_cast<size_t>(index);
  const GrammarRule& r = i < rules_.size() ? rules_[i] : added_[i - rules_.size()];
  if (!hoisting_needed(r.body, Place::kBody)) return r;
  // Only the grammar's own rules get here: the rules made by rewriting come from expressions
  // already visited.
  GrammarRule& copy = rewritten_.emplace_back(r);
  hoister_->rewrite(copy.body, copy.name);
  return copy;
}

std::optional<int32_t> stamp_repeat(std::vector<PdaState>& states, size_t item_base,
                                    int32_t item_start, uint32_t min, uint32_t max,
                                    int32_t rest_start) {
  const size_t n = states.size() - item_base;
  const size_t start = static_cast<size_t>(item_start) - item_base;
  if (states[item_start].final) return std::nullopt;
  // Each copy holds the item's non-final states (its start first); the item's final states
  // are where the next copy starts.
  std::vector<int32_t> local(n, -1);
  std::vector<size_t> kept{start};
  local[start] = 0;
  for (size_t k = 0; k < n; ++k) {
    const PdaState& st = states[item_base + k];
    if (st.final && (!st.bytes.empty() || !st.refs.empty())) return std::nullopt;
    for (const PdaByteEdge& e : st.bytes) {
      if (e.target == item_start) return std::nullopt;
    }
    for (const PdaRefEdge& r : st.refs) {
      if (r.target == item_start) return std::nullopt;
    }
    if (k != start && !st.final) {
      local[k] = static_cast<int32_t>(kept.size());
      kept.push_back(k);
    }
  }
  // Once `min` copies are done, the start of a copy also begins the rest: its edges join the
  // item's start's, which must stay deterministic.
  const PdaState rest = states[rest_start];
  const PdaState& first = states[item_start];
  std::vector<PdaByteEdge> joined_bytes;
  std::merge(first.bytes.begin(), first.bytes.end(), rest.bytes.begin(), rest.bytes.end(),
             std::back_inserter(joined_bytes),
             [](const PdaByteEdge& a, const PdaByteEdge& b) { return a.lo < b.lo; });
  for (size_t i = 1; i < joined_bytes.size(); ++i) {
    if (joined_bytes[i - 1].hi >= joined_bytes[i].lo) return std::nullopt;
  }
  for (const PdaRefEdge& r : rest.refs) {
    for (const PdaRefEdge& q : first.refs) {
      if (q.rule == r.rule) return std::nullopt;
    }
  }
  const bool unbounded = max == Expr::kUnbounded;
  const uint64_t copies = unbounded ? uint64_t{min} + 1 : max;
  const size_t per_copy = kept.size();
  if (copies * per_copy > kMaxStampedStates) return std::nullopt;

  std::vector<PdaState> item(std::make_move_iterator(states.begin() + item_base),
                             std::make_move_iterator(states.end()));
  states.resize(item_base);
  // Grown geometrically: reserving the exact size would move every state for each repetition.
  if (const size_t need = item_base + copies * per_copy; need > states.capacity()) {
    states.reserve(std::max(need, 2 * states.capacity()));
  }
  const int32_t rule = item[start].rule;
  for (uint64_t c = 0; c < copies; ++c) {
    const auto level = static_cast<int32_t>(item_base + c * per_copy);
    // After the last copy comes the rest; the last copy of x{m,} loops back to its own start.
    const int32_t next = c + 1 < copies ? level + static_cast<int32_t>(per_copy)
                         : unbounded    ? level
                                        : rest_start;
    auto target = [&](int32_t t) {
      const int32_t l = local[t - item_base];
      return l < 0 ? next : level + l;
    };
    for (size_t k : kept) {
      PdaState st;
      st.rule = rule;
      st.bytes = item[k].bytes;
      for (PdaByteEdge& e : st.bytes) e.target = target(e.target);
      st.refs = item[k].refs;
      for (PdaRefEdge& r : st.refs) r.target = target(r.target);
      if (k == start && c >= min) {
        st.final = rest.final;
        std::vector<PdaByteEdge> bytes;
        bytes.reserve(st.bytes.size() + rest.bytes.size());
        std::merge(st.bytes.begin(), st.bytes.end(), rest.bytes.begin(), rest.bytes.end(),
                   std::back_inserter(bytes),
                   [](const PdaByteEdge& a, const PdaByteEdge& b) { return a.lo < b.lo; });
        st.bytes = std::move(bytes);
        st.refs.insert(st.refs.end(), rest.refs.begin(), rest.refs.end());
      }
      states.push_back(std::move(st));
    }
  }
  return static_cast<int32_t>(item_base);
}

}  // namespace agentrt::grammars
