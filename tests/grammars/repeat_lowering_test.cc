#include "grammars/repeat_lowering.h"

#include <gtest/gtest.h>

#include <random>

#include "grammar_test_support.h"
#include "grammars/matcher.h"

namespace agentrt::grammars {
namespace {

bool accepts(const std::shared_ptr<const CompiledGrammar>& g, std::string_view text) {
  GrammarMatcher m(g);
  return m.accept_bytes(text) && m.can_end();
}

size_t rules_named_rep(const PushdownAutomaton& pda) {
  size_t n = 0;
  for (const PdaRule& r : pda.rules) n += r.name.find("_rep") != std::string::npos;
  return n;
}

struct Item {
  std::string ebnf;                // the repeated expression
  std::vector<std::string> words;  // strings it matches (runs of them split one way only)
};

// Counts around both bounds and a few random ones.
std::vector<uint32_t> counts_to_try(uint32_t min, uint32_t max, std::mt19937& rng) {
  std::vector<uint32_t> out = {0, 1, min, min + 1, min + 7};
  if (min > 0) out.push_back(min - 1);
  const uint32_t top = max == Expr::kUnbounded ? min + 60 : max;
  out.insert(out.end(), {top - 1, top, top + 1});
  for (int i = 0; i < 4; ++i) out.push_back(rng() % (top + 2));
  return out;
}

// Each item at several bounds and places (whole body, before the rest of a sequence, twice in
// one sequence, an alternative, inside another repetition): the language is exactly the
// counts allowed, whether the repetition was stamped or (where it cannot be) determinised.
TEST(RepeatLowering, StampedRepetitionsMatchTheirCounts) {
  auto index = testing::small_index();
  std::mt19937 rng(11);
  const std::vector<Item> items = {
      {"[a-c]", {"a", "b", "c"}},
      {R"(([a-z] | "é" | "日" | "\\" [nt]))", {"x", "é", "日", "\\n", "\\t"}},
      {R"(("ab" | "c"))", {"ab", "c"}},
      {"w", {"w", "w1"}},              // a rule reference
      {R"(("x" "y"?))", {"x", "xy"}},  // not prefix-free: determinised instead
  };
  struct Bounds {
    uint32_t min, max;
  };
  // Large enough that every item above is stamped where its automaton allows (a rule
  // reference counts 2 per copy against kMinStampedSize).
  const std::vector<Bounds> bounds = {
      {0, 600}, {1, 600}, {5, 600}, {600, 600}, {520, Expr::kUnbounded}};
  const std::vector<std::pair<std::string, std::string>> places = {
      {"root ::= R", ""},          {"root ::= \"<\" R \">\"", "<%>"},
      {"root ::= R \"!\"", "%!"},  {"root ::= \"<\" R \">\" R \"!\"", "<%>%!"},
      {"root ::= R | \"z\"", "%"}, {"root ::= (\"[\" R \"]\"){1,2}", "[%]"},
  };
  for (const Item& item : items) {
    for (Bounds b : bounds) {
      std::string rep = item.ebnf + "{" + std::to_string(b.min) + "," +
                        (b.max == Expr::kUnbounded ? "" : std::to_string(b.max)) + "}";
      for (const auto& [place, shape] : places) {
        std::string ebnf = place;
        for (size_t at; (at = ebnf.find('R')) != std::string::npos;) ebnf.replace(at, 1, rep);
        ebnf += "\nw ::= \"w\" [0-9]?\n";
        auto g = compile(Grammar::from_ebnf(ebnf), index);
        for (uint32_t count : counts_to_try(b.min, b.max, rng)) {
          std::string run;
          for (uint32_t i = 0; i < count; ++i) run += item.words[rng() % item.words.size()];
          std::string text = shape.empty() ? "%" : shape;
          // Both copies of R in "<%>%!" get the same count.
          for (size_t at; (at = text.find('%')) != std::string::npos;) text.replace(at, 1, run);
          const bool in_bounds = count >= b.min && count <= b.max;
          EXPECT_EQ(accepts(g, text), in_bounds) << ebnf << "\n count " << count << ": " << text;
        }
      }
    }
  }
}

TEST(RepeatLowering, RestThatCouldStartAnotherCopyIsDeterminised) {
  // The rest begins with a byte an item also begins with: no stamping, same language.
  auto g = compile(Grammar::from_ebnf(R"(root ::= [a-c]{0,300} "c")"), testing::small_index());
  EXPECT_TRUE(accepts(g, "c"));
  EXPECT_TRUE(accepts(g, "abcc"));
  EXPECT_TRUE(accepts(g, std::string(300, 'a') + "c"));
  EXPECT_FALSE(accepts(g, std::string(301, 'a') + "c"));
  EXPECT_FALSE(accepts(g, "ab"));
}

// The automaton of `root ::= item` after a final state without edges (the rest of the
// sequence, at 0); returns the item's start.
int32_t item_after_empty_rest(std::string_view item, std::vector<PdaState>& states) {
  auto pda = PushdownAutomaton::build(Grammar::from_ebnf("root ::= " + std::string(item)));
  states.assign(1, PdaState{});
  states[0].final = true;
  for (PdaState st : pda.states) {
    for (PdaByteEdge& e : st.bytes) ++e.target;
    for (PdaRefEdge& r : st.refs) ++r.target;
    states.push_back(std::move(st));
  }
  return pda.rules[0].start + 1;
}

TEST(RepeatLowering, StampsOnlyItemsWhoseCopiesCanBeChained) {
  std::vector<PdaState> states;
  for (std::string_view ok : {"[a-c]", R"("ab" | "c")", R"([a-z] | "\\" [nt] | "é")"}) {
    const int32_t start = item_after_empty_rest(ok, states);
    auto stamped = stamp_repeat(states, 1, start, 2, 100, 0);
    ASSERT_TRUE(stamped.has_value()) << ok;
    EXPECT_EQ(*stamped, 1);
    EXPECT_FALSE(states[1].final);  // fewer than min copies
  }
  // Not prefix-free, nullable on bytes, re-entering its start.
  for (std::string_view refused : {R"("x" "y"?)", R"("x"?)", R"("x"* "y")"}) {
    const int32_t start = item_after_empty_rest(refused, states);
    const size_t before = states.size();
    EXPECT_FALSE(stamp_repeat(states, 1, start, 0, 100, 0).has_value()) << refused;
    EXPECT_EQ(states.size(), before);
  }
  // A rest that begins with a byte the item begins with.
  std::vector<PdaState> item;
  const int32_t start = item_after_empty_rest("[a-c]", item);
  states.assign(2, PdaState{});
  states[0].bytes.push_back({'b', 'b', 1});
  states[1].final = true;
  for (PdaState st : item) {
    for (PdaByteEdge& e : st.bytes) e.target += 1;
    states.push_back(std::move(st));
  }
  EXPECT_FALSE(stamp_repeat(states, 2, start + 1, 0, 100, 0).has_value());
}

TEST(RepeatLowering, EqualRepetitionsShareOneRule) {
  auto pda = PushdownAutomaton::build(Grammar::from_ebnf(R"(root ::= x "," y
x ::= "<" [a-c]{0,300} ">"
y ::= "(" [a-c]{0,300} ">")"));
  ASSERT_EQ(pda.rules.size(), 4u);
  EXPECT_EQ(rules_named_rep(pda), 1u);
  EXPECT_LT(pda.states.size(), 320u);
}

TEST(RepeatLowering, ShortRepetitionsStayInline) {
  auto pda = PushdownAutomaton::build(Grammar::from_ebnf(R"(root ::= "\"" [a-c]{0,20} "\"")"));
  EXPECT_EQ(pda.rules.size(), 1u);
}

// Rules are rewritten one at a time as the automaton builder asks for them: unchanged ones are
// the grammar's own, changed ones copies whose new rules are numbered after the grammar's.
TEST(RepeatLowering, HoistsRuleByRule) {
  Grammar g = Grammar::from_ebnf(R"(root ::= "{" x "}" z
x ::= "<" [a-c]{0,300} ">"
z ::= "." [a-c]{0,3})");
  RepeatHoisting hoisting(g.rules());
  const std::vector<GrammarRule>& rules = g.rules();
  auto index_of = [&](const std::string& name) {
    for (size_t i = 0; i < rules.size(); ++i) {
      if (rules[i].name == name) return static_cast<int32_t>(i);
    }
    ADD_FAILURE() << "no rule " << name;
    return int32_t{0};
  };
  EXPECT_EQ(&hoisting.rule(g.root()), &rules[g.root()]);
  EXPECT_EQ(&hoisting.rule(index_of("z")), &rules[index_of("z")]);  // short: stays inline
  // x's repetition and the rest of its sequence become a rule of their own, past the grammar's.
  const GrammarRule& x = hoisting.rule(index_of("x"));
  EXPECT_NE(&x, &rules[index_of("x")]);
  EXPECT_EQ(x.name, "x");
  ASSERT_EQ(x.body.kind, Expr::Kind::kSequence);
  ASSERT_EQ(x.body.children.size(), 2u);
  const Expr& ref = x.body.children[1];
  ASSERT_EQ(ref.kind, Expr::Kind::kRuleRef);
  EXPECT_EQ(ref.rule, static_cast<int32_t>(rules.size()));
  const GrammarRule& stamped = hoisting.rule(ref.rule);
  EXPECT_FALSE(stamped_sequence(stamped.body).empty());
  EXPECT_EQ(&hoisting.rule(ref.rule), &stamped);  // asked again: the same rule
  // The automaton built this way takes exactly the counts allowed.
  auto cg = compile(g, testing::small_index());
  EXPECT_TRUE(accepts(cg, "{<>}."));
  EXPECT_TRUE(accepts(cg, "{<" + std::string(300, 'b') + ">}.abc"));
  EXPECT_FALSE(accepts(cg, "{<" + std::string(301, 'b') + ">}."));
  EXPECT_FALSE(accepts(cg, "{<>}.abca"));
}

}  // namespace
}  // namespace agentrt::grammars
