// How counted repetitions x{m,n} reach the automaton. Small ones are copied inline (each copy
// determinised in context). Large items become a rule referenced per copy. Long repetitions
// (a string of up to 4,096 characters) get a rule of their own whose automaton is stamped: the
// item is determinised once and its states copied per repetition, instead of building and
// determinising thousands of copies of the item's NFA; equal ones share that rule.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "grammars/grammar.h"
#include "grammars/pushdown_automaton.h"

namespace agentrt::grammars {

// A rule body lowered by stamp_repeat (when its item allows): a long repetition alone or
// followed by the rest of its sequence, as [repetition, rest...]; empty otherwise. The rest
// comes along so that the repetition's positions are not ends of the rule (a rule that may
// return at every position makes every token a candidate suffix past the return).
std::span<const Expr> stamped_sequence(const Expr& body);

// Rules rewritten for lowering: large repeated items moved into rules of their own, and each
// long repetition with the rest of its sequence into a rule of the stamped_sequence form (one
// per distinct content), numbered after the grammar's rules. Asked rule by rule as the
// automaton builder meets them: a rule is checked right before it is lowered (its expressions
// then in cache for both walks), and only the rules that change are copied.
class RepeatHoisting {
 public:
  explicit RepeatHoisting(const std::vector<GrammarRule>& rules);  // must outlive this
  ~RepeatHoisting();
  RepeatHoisting(const RepeatHoisting&) = delete;
  RepeatHoisting& operator=(const RepeatHoisting&) = delete;

  // Rule `index` as it is to be lowered (the grammar's, or a rewritten copy); valid for the
  // lifetime of this object. Indices past the grammar's are rules made by earlier calls.
  const GrammarRule& rule(int32_t index);

 private:
  class Hoister;
  const std::vector<GrammarRule>& rules_;
  std::deque<GrammarRule> added_;      // made by rewriting, numbered from rules_.size()
  std::deque<GrammarRule> rewritten_;  // copies of the grammar's rules that changed
  std::unique_ptr<Hoister> hoister_;
};

// Replaces the item's automaton, states[item_base..] with start `item_start`, by `min`..`max`
// (Expr::kUnbounded) stamped copies of it, followed by the rest's automaton (`rest_start`, kept
// where it is), and returns the start. nullopt (states untouched) when stamping would not give
// that language: the item must be prefix-free (its final states have no edges), not match the
// empty string on bytes alone and never re-enter its start, and where the rest may begin
// instead of another copy their first bytes and rules must differ.
std::optional<int32_t> stamp_repeat(std::vector<PdaState>& states, size_t item_base,
                                    int32_t item_start, uint32_t min, uint32_t max,
                                    int32_t rest_start);

}  // namespace agentrt::grammars
