#include "grammars/regex_parser.h"

#include <gtest/gtest.h>

#include <random>
#include <regex>

#include "grammar_test_support.h"
#include "grammars/grammar.h"

namespace agentrt::grammars {
namespace {

bool full_match(std::string_view pattern, std::string_view text) {
  GrammarMatcher m(compile(Grammar::from_regex(pattern), testing::small_index()));
  return m.accept_bytes(text) && m.can_end();
}

std::string error_of(std::string_view pattern) {
  try {
    Grammar::from_regex(pattern);
  } catch (const GrammarError& e) {
    return e.what();
  }
  return "";
}

TEST(RegexParser, Basics) {
  EXPECT_TRUE(full_match("^abc$", "abc"));
  EXPECT_FALSE(full_match("^abc$", "abcd"));
  EXPECT_TRUE(full_match("a|bc|", ""));
  EXPECT_TRUE(full_match("(?:ab)+c?", "ababc"));
  EXPECT_TRUE(full_match("(?<year>\\d{4})-(\\d{2})", "2024-05"));
  EXPECT_TRUE(full_match("a{2,3}?b*?", "aaab"));
  EXPECT_FALSE(full_match("a{2,3}", "aaaa"));
  EXPECT_TRUE(full_match("x{,2}", "x{,2}"));  // not a quantifier in ECMAScript: literal
  EXPECT_TRUE(full_match("[\\w.-]+@[^\\s@]+", "a.b-c@d.e"));
  EXPECT_FALSE(full_match("[\\w.-]+@[^\\s@]+", "a b@c"));
  EXPECT_TRUE(full_match("\\D\\W\\S", "a-b"));
  EXPECT_TRUE(full_match("[^a-z]", "é"));
  EXPECT_TRUE(full_match(".", "日"));
  EXPECT_FALSE(full_match(".", "\n"));
  EXPECT_TRUE(full_match("[\\s\\S]", "\n"));
  EXPECT_TRUE(full_match("\\x41\\u00e9\\u{1F600}\\t", "Aé😀\t"));
  EXPECT_TRUE(full_match("\\uD83D\\uDE00", "😀"));
  EXPECT_TRUE(full_match("[\\u00e0-\\u00ff]+", "àéÿ"));
  EXPECT_FALSE(full_match("[\\u00e0-\\u00ff]+", "aé"));
  EXPECT_TRUE(full_match("\\s", "\xE3\x80\x80"));  // U+3000 is ECMAScript white space
  EXPECT_TRUE(full_match("[]a|b", "b"));           // [] matches nothing
  EXPECT_TRUE(full_match("[^]", "\n"));
  EXPECT_TRUE(full_match("\\.\\*\\/\\(", ".*/("));
  EXPECT_TRUE(full_match("^(a|b)$|^c$", "c"));
}

TEST(RegexParser, UnsupportedFeaturesAreClearErrors) {
  EXPECT_NE(error_of("a(?=b)").find("lookahead"), std::string::npos);
  EXPECT_NE(error_of("a(?!b)").find("lookahead"), std::string::npos);
  EXPECT_NE(error_of("(?<=a)b").find("lookbehind"), std::string::npos);
  EXPECT_NE(error_of("(a)\\1").find("backreference"), std::string::npos);
  EXPECT_NE(error_of("\\bword").find("word boundary"), std::string::npos);
  EXPECT_NE(error_of("a^b").find("'^'"), std::string::npos);
  EXPECT_NE(error_of("a$b").find("'$'"), std::string::npos);
  EXPECT_NE(error_of("*a").find("nothing to repeat"), std::string::npos);
  EXPECT_NE(error_of("(ab").find("missing ')'"), std::string::npos);
  EXPECT_NE(error_of("ab)").find("unmatched ')'"), std::string::npos);
  EXPECT_NE(error_of("[z-a]").find("out of order"), std::string::npos);
  EXPECT_NE(error_of("[ab").find("offset 3"), std::string::npos);
}

// 50,000 nested groups or stacked quantifiers overflowed the stack; past kMaxExprNesting they
// are an error with the offset.
TEST(RegexParser, DeepNestingIsAnErrorNotAStackOverflow) {
  const int n = kMaxExprNesting;
  EXPECT_TRUE(full_match(std::string(n, '(') + "a" + std::string(n, ')'), "a"));
  EXPECT_NE(error_of(std::string(50'000, '(') + "a" + std::string(50'000, ')'))
                .find("at offset 256: groups and quantifiers nested more than 256 deep"),
            std::string::npos);
  EXPECT_NE(error_of("a" + std::string(50'000, '+')).find("nested more than 256 deep"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(50'000, '(') + "?:a)*").find("nested more than 256 deep"),
            std::string::npos);
}

// An ambiguous repetition whose DFA states each hold ~80 NFA states is refused by the bound on
// their sum, long before the bound on the state count (which took seconds to reach).
TEST(RegexParser, AmbiguousRepetitionIsRefusedByTheDeterminizationBound) {
  std::string what;
  try {
    compile(Grammar::from_regex("^(?:\\S.+\\s+){0,99}\\S+-"), testing::small_index());
  } catch (const GrammarError& e) {
    what = e.what();
  }
  EXPECT_NE(what.find("too large (its automaton states hold over 4000000 NFA states in all)"),
            std::string::npos)
      << what;
}

// Whole-string matches agree with std::regex (ECMAScript) on random ASCII strings.
TEST(RegexParser, AgreesWithStdRegex) {
  const std::vector<std::string> patterns = {
      "^[a-c]+(x|yz)*$", "(ab|a)(bc|c)?", "[^a]b{1,3}c?", "\\d+(\\.\\d*)?([eE][+-]?\\d+)?",
      "(a|b)*abb",       "[\\w-]{2,4}",   "a?b?c?\\s*",   "(?:x[yz]|\\W)+",
      "[a-c-e]+",        "(a{0,2}b){2}"};
  const std::string alphabet = "abcxyz-+.eE0129 _\t";
  std::mt19937 rng(7);
  for (const std::string& p : patterns) {
    std::regex re(p, std::regex::ECMAScript);
    GrammarMatcher m(compile(Grammar::from_regex(p), testing::small_index()));
    for (int i = 0; i < 300; ++i) {
      std::string s;
      size_t len = rng() % 7;
      for (size_t k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
      m.reset();
      bool ours = m.accept_bytes(s) && m.can_end();
      EXPECT_EQ(ours, std::regex_match(s, re)) << "/" << p << "/ on '" << s << "'";
    }
  }
}

}  // namespace
}  // namespace agentrt::grammars
