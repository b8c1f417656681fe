#include "grammars/position_classes.h"

#include <gtest/gtest.h>

#include "grammar_test_support.h"
#include "grammars/grammar.h"
#include "grammars/matcher.h"

namespace agentrt::grammars {
namespace {

using testing::bit;
using testing::fast_mask;
using testing::reference_mask;

// Tokens of every length 1..40 made of 'a', so that the end of a counted repetition shows.
Vocabulary runs_vocabulary() {
  std::vector<std::string> extra;
  for (int n = 2; n <= 40; ++n) extra.push_back(std::string(n, 'a'));
  extra.push_back("a\"");
  extra.push_back(std::string(35, 'a') + "\"");
  return testing::small_vocabulary(extra);
}

TEST(PositionClasses, CountedRepetitionSharesMasksAndStaysExact) {
  Vocabulary vocab = runs_vocabulary();
  auto index = TokenizerIndex::build(vocab);
  auto g = compile(Grammar::from_ebnf(R"(root ::= "\"" [a-z]{0,300} "\"")"), index);
  GrammarMatcher m(g);
  ASSERT_TRUE(m.accept_bytes("\""));
  for (int i = 0; i < 300; ++i) {
    if (i % 7 == 0 || i > 260) {
      ASSERT_EQ(fast_mask(m), reference_mask(m, vocab.token_bytes.size())) << "after " << i;
    }
    ASSERT_TRUE(m.accept_bytes("a"));
  }
  EXPECT_FALSE(m.accept_bytes("a"));
  EXPECT_TRUE(m.accept_bytes("\""));
  // Positions with at least 32 characters left behave alike for short tokens: one shared
  // classification for those 268 states, one each for the last 32 and the ends.
  EXPECT_LT(g->num_short_token_masks(), 40u);
}

TEST(PositionClasses, IdenticalRulesShareMasks) {
  auto index = testing::small_index();
  std::string ebnf = "root ::= a \",\" b \",\" c\n";
  for (const char* r : {"a", "b", "c"}) ebnf += std::string(r) + R"( ::= "\"" [^"]* "\"")" + "\n";
  auto g = compile(Grammar::from_ebnf(ebnf), index);
  GrammarMatcher m(g);
  for (std::string_view piece : {"\"x", "y\"", ",", "\"z", "\"", ",", "\"w"}) {
    fast_mask(m);
    ASSERT_TRUE(m.accept_bytes(piece)) << piece;
  }
  // root's positions plus one string-content position shared by a, b and c (and their
  // openings and closings): well under one per visited state.
  EXPECT_LE(g->num_short_token_masks(), 6u);
}

TEST(PositionClasses, SignaturesSeparateDifferentBehaviour) {
  PushdownAutomaton pda =
      PushdownAutomaton::build(Grammar::from_ebnf(R"(root ::= "a"{3} | "b" [0-9]{1,40})"));
  PositionSignatures sigs(pda, 32);
  std::vector<PositionSignature> seen;
  for (size_t s = 0; s < pda.states.size(); ++s) {
    for (size_t t = 0; t < s; ++t) {
      const PdaState& a = pda.states[s];
      const PdaState& b = pda.states[t];
      if (a.final != b.final) {
        EXPECT_FALSE(sigs.of(static_cast<int32_t>(s)) == sigs.of(static_cast<int32_t>(t)));
      }
    }
  }
}

}  // namespace
}  // namespace agentrt::grammars

namespace agentrt::grammars {
namespace {

TEST(PositionClasses, GrammarsShareTokenizerLevelMasksExactly) {
  Vocabulary vocab = testing::small_vocabulary(testing::json_like_tokens());
  auto index = TokenizerIndex::build(vocab);
  const std::string str = R"("\"" [^"\\]* "\"")";
  auto first = compile(Grammar::from_ebnf("root ::= \"[\" s \"]\"\ns ::= " + str), index);
  auto second =
      compile(Grammar::from_ebnf("root ::= \"{\" s \":\" [0-9]+ \"}\"\ns ::= " + str), index);
  GrammarMatcher a(first);
  ASSERT_TRUE(a.accept_bytes("[\"ab"));
  ASSERT_EQ(fast_mask(a), reference_mask(a, vocab.token_bytes.size()));
  size_t shared = index->shared_masks().size();
  EXPECT_GT(shared, 0u);
  GrammarMatcher b(second);
  ASSERT_TRUE(b.accept_bytes("{\"ab"));
  // The string content position is reused from the first grammar, with the second grammar's
  // context below it deciding the tokens that close the string.
  ASSERT_EQ(fast_mask(b), reference_mask(b, vocab.token_bytes.size()));
  EXPECT_EQ(index->shared_masks().size(), shared);
  EXPECT_TRUE(bit(fast_mask(b), 256 + 1));   // "\":" closes the string and opens the value
  EXPECT_FALSE(bit(fast_mask(a), 256 + 1));  // but not in the array
}

}  // namespace
}  // namespace agentrt::grammars
