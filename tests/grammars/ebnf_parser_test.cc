#include "grammars/ebnf_parser.h"

#include <gtest/gtest.h>

#include "grammar_test_support.h"
#include "grammars/grammar.h"

namespace agentrt::grammars {
namespace {

using testing::read_fixture;
using testing::small_index;

bool accepts(const Grammar& g, std::string_view text) {
  GrammarMatcher m(compile(g, small_index()));
  return m.accept_bytes(text) && m.can_end();
}

bool accepts(std::string_view ebnf, std::string_view text) {
  return accepts(Grammar::from_ebnf(ebnf), text);
}

std::string error_of(std::string_view ebnf) {
  try {
    Grammar g = Grammar::from_ebnf(ebnf);
    compile(g, small_index());
  } catch (const GrammarError& e) {
    return e.what();
  }
  return "";
}

TEST(EbnfParser, LlamaCppJson) {
  Grammar g = Grammar::from_ebnf(read_fixture("json.gbnf"));
  EXPECT_TRUE(accepts(g, R"({"a": [1, 2.5e+3, true, null, "x\n\u00e9"], "b": {}})"));
  EXPECT_TRUE(accepts(g, "{}"));
  EXPECT_TRUE(accepts(g, "{\"日本\": \"é\"}"));
  EXPECT_FALSE(accepts(g, "{"));
  EXPECT_FALSE(accepts(g, R"({"a": 01})"));
  EXPECT_FALSE(accepts(g, R"({"a" 1})"));
  EXPECT_FALSE(accepts(g, "[1]"));  // root is an object
  EXPECT_FALSE(accepts(g, "{\"a\": \"\x01\"}"));
}

TEST(EbnfParser, LlamaCppArithmetic) {
  Grammar g = Grammar::from_ebnf(read_fixture("arithmetic.gbnf"));
  EXPECT_TRUE(accepts(g, "1+2=3\n"));
  EXPECT_TRUE(accepts(g, "(a+b)*c = x_1\n2=2\n"));
  EXPECT_FALSE(accepts(g, "1+=3\n"));
  EXPECT_FALSE(accepts(g, "1+2=3"));
}

TEST(EbnfParser, LlamaCppChess) {
  Grammar g = Grammar::from_ebnf(read_fixture("chess.gbnf"));
  EXPECT_TRUE(accepts(g, "1. e4 e5\n2. Nf3 Nc6\n3. Bb5 a6\n4. O-O Nxe4\n"));
  EXPECT_TRUE(accepts(g, "1. e4 e5\n2. exd5+ Qxd5#\n"));
  EXPECT_FALSE(accepts(g, "1. e4 e5\n"));
  EXPECT_FALSE(accepts(g, "1. e9 e5\n2. a3 a6\n"));
}

TEST(EbnfParser, LlamaCppList) {
  Grammar g = Grammar::from_ebnf(read_fixture("list.gbnf"));
  EXPECT_TRUE(accepts(g, "- cat\n- dog é\n"));
  EXPECT_FALSE(accepts(g, "- \n"));
  EXPECT_FALSE(accepts(g, "- a\u2028b\n"));
  EXPECT_FALSE(accepts(g, "cat\n"));
}

TEST(EbnfParser, EscapesAndClasses) {
  EXPECT_TRUE(accepts(R"(root ::= "\"\\\n\r\t\x41\u00e9\U0001F600")", "\"\\\n\r\tAé😀"));
  EXPECT_TRUE(accepts(R"(root ::= [a-z\u00e9-\u00ff]+)", "abcéÿ"));
  EXPECT_FALSE(accepts(R"(root ::= [a-z\u00e9-\u00ff]+)", "abcĀ"));
  EXPECT_TRUE(accepts(R"(root ::= [^"\\\x00-\x1f]*)", "hé 日本"));
  EXPECT_FALSE(accepts(R"(root ::= [^"\\\x00-\x1f]*)", "a\"b"));
  EXPECT_TRUE(accepts("root ::= . . .", "a日😀"));
  EXPECT_FALSE(accepts("root ::= . .", "a"));
  EXPECT_TRUE(accepts(R"(root ::= [\]\-\\]+)", "]-\\"));
}

// Classes are kept sorted, disjoint and apart, without surrogates, whether they come in that
// way (kept as they are) or not (sorted and merged).
TEST(EbnfParser, ClassRangesAreNormalised) {
  using R = std::vector<CodePointRange>;
  auto same = [](const R& a, const R& b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](CodePointRange x, CodePointRange y) {
             return x.lo == y.lo && x.hi == y.hi;
           });
  };
  EXPECT_TRUE(same(normalize_ranges({{'a', 'a'}, {'c', 'f'}}), R{{'a', 'a'}, {'c', 'f'}}));
  EXPECT_TRUE(same(normalize_ranges({{'c', 'f'}, {'a', 'b'}}), R{{'a', 'f'}}));
  EXPECT_TRUE(same(normalize_ranges({{'a', 'b'}, {'b', 'd'}}), R{{'a', 'd'}}));
  EXPECT_TRUE(same(normalize_ranges({{0xD000, 0xE100}}), R{{0xD000, 0xD7FF}, {0xE000, 0xE100}}));
  EXPECT_TRUE(same(normalize_ranges({{0xD900, 0xDA00}, {'z', 'y'}}), R{}));
  EXPECT_TRUE(accepts(R"(root ::= [c-fa]+)", "acef"));
  EXPECT_FALSE(accepts(R"(root ::= [c-fa]+)", "b"));
}

TEST(EbnfParser, Repetitions) {
  EXPECT_TRUE(accepts(R"(root ::= "a"{3})", "aaa"));
  EXPECT_FALSE(accepts(R"(root ::= "a"{3})", "aa"));
  EXPECT_TRUE(accepts(R"(root ::= "a"{2,})", "aaaaa"));
  EXPECT_FALSE(accepts(R"(root ::= "a"{2,})", "a"));
  EXPECT_TRUE(accepts(R"(root ::= ("a" "b"){1,3})", "ababab"));
  EXPECT_FALSE(accepts(R"(root ::= ("a" "b"){1,3})", "abababab"));
  EXPECT_TRUE(accepts(R"(root ::= "x"{,2})", "xx"));
  EXPECT_TRUE(accepts(R"(root ::= "x"? "y"* "z"+)", "z"));
  EXPECT_TRUE(accepts(R"(root ::= "x"? "y"* "z"+)", "xyyzz"));
}

TEST(EbnfParser, LargeBoundsStaySmall) {
  Grammar g = Grammar::from_ebnf(R"(root ::= "\"" [^"\\]{0,5000} "\"" ("," [0-9]{1,3}){0,5000})");
  EXPECT_TRUE(accepts(g, "\"" + std::string(4999, 'x') + "\",1,22,333"));
  EXPECT_FALSE(accepts(g, "\"" + std::string(5001, 'x') + "\""));
}

TEST(EbnfParser, MultiLineRulesAndComments) {
  std::string g = R"(# header
root ::= a
  b   # trailing comment
  | "c"
a ::= "a"
b ::=
  "b"
)";
  EXPECT_TRUE(accepts(g, "ab"));
  EXPECT_TRUE(accepts(g, "c"));
  EXPECT_FALSE(accepts(g, "a"));
}

TEST(EbnfParser, RegexTerminals) {
  EXPECT_TRUE(accepts(R"(root ::= "id:" /[a-z]+\d{2}/ "!")", "id:abc12!"));
  EXPECT_FALSE(accepts(R"(root ::= "id:" /[a-z]+\d{2}/ "!")", "id:abc1!"));
  EXPECT_TRUE(accepts(R"(root ::= /a\/b|[/]x/)", "a/b"));
  EXPECT_TRUE(accepts(R"(root ::= /a\/b|[/]x/)", "/x"));
}

TEST(EbnfParser, ErrorsNameLineAndColumn) {
  EXPECT_NE(error_of("root ::= \"a\"\nfoo ::= bar\n").find("2:9"), std::string::npos)
      << error_of("root ::= \"a\"\nfoo ::= bar\n");
  EXPECT_NE(error_of("root ::= \"a").find("1:10"), std::string::npos);
  EXPECT_NE(error_of("root ::= [a-").find("unterminated"), std::string::npos);
  EXPECT_NE(error_of("root ::= (\"a\"").find("expected ')'"), std::string::npos);
  EXPECT_NE(error_of("a ::= \"x\"").find("no root rule"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"\nroot ::= \"b\"").find("defined twice"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"a\"{3,1}").find("n < m"), std::string::npos);
  EXPECT_NE(error_of("root ::= /a(?=b)/").find("lookahead"), std::string::npos);
  EXPECT_NE(error_of("root ::= \"\\q\"").find("unknown escape"), std::string::npos);
  EXPECT_NE(error_of("root ::= root \"a\" | \"b\"").find("left recursion"), std::string::npos);
  EXPECT_NE(error_of("root ::= x? root \"a\" | \"b\"\nx ::= \"x\"").find("left recursion"),
            std::string::npos);
  EXPECT_NE(error_of("root ::= [^\\x00-\\U0010FFFF]").find("matches no string"), std::string::npos);
}

TEST(EbnfParser, RightRecursionIsFine) {
  EXPECT_TRUE(accepts(R"g(root ::= "(" root ")" | "")g", "((()))"));
  EXPECT_FALSE(accepts(R"g(root ::= "(" root ")" | "")g", "(()"));
}

// A chain root ::= r0, r0 ::= r1, ... of 50,000 rules overflowed the stack in the
// left-recursion check, which recursed once per rule of the chain.
TEST(EbnfParser, LongChainOfRulesIsNotAStackOverflow) {
  constexpr int kRules = 200'000;
  std::string ebnf = "root ::= r0\n";
  for (int i = 0; i < kRules; ++i)
    ebnf += "r" + std::to_string(i) + " ::= r" + std::to_string(i + 1) + "\n";
  ebnf += "r" + std::to_string(kRules) + " ::= \"a\"\n";
  EXPECT_TRUE(accepts(ebnf, "a"));
  EXPECT_FALSE(accepts(ebnf, "b"));
}

// 50,000 nested groups, or 50,000 stacked quantifiers, overflowed the stack in the parser and
// the passes over the expression tree; past kMaxExprNesting they are an error with the position.
TEST(EbnfParser, DeepNestingIsAnErrorNotAStackOverflow) {
  const int n = kMaxExprNesting;
  const std::string ok = "root ::= " + std::string(n, '(') + "\"a\"" + std::string(n, ')');
  EXPECT_TRUE(accepts(ok, "a"));
  const std::string groups =
      "root ::= " + std::string(50'000, '(') + "\"a\"" + std::string(50'000, ')');
  EXPECT_NE(error_of(groups).find("1:266: groups and quantifiers nested more than 256 deep"),
            std::string::npos)
      << error_of(groups);
  const std::string stars = "root ::= \"a\"" + std::string(50'000, '*');
  EXPECT_NE(error_of(stars).find("nested more than 256 deep"), std::string::npos)
      << error_of(stars);
}

TEST(EbnfParser, ToEbnfRoundTrips) {
  for (const char* name : {"json.gbnf", "arithmetic.gbnf", "chess.gbnf", "list.gbnf"}) {
    Grammar g = Grammar::from_ebnf(read_fixture(name));
    // Rule order may change (rules are numbered by first mention); the set of rules may not.
    auto sorted_lines = [](std::string text) {
      std::vector<std::string> lines;
      std::stringstream ss(text);
      for (std::string line; std::getline(ss, line);) lines.push_back(line);
      std::sort(lines.begin(), lines.end());
      return lines;
    };
    std::string text = g.to_ebnf();
    EXPECT_EQ(sorted_lines(Grammar::from_ebnf(text).to_ebnf()), sorted_lines(text)) << name;
  }
  Grammar j = Grammar::from_ebnf(Grammar::from_ebnf(read_fixture("json.gbnf")).to_ebnf());
  EXPECT_TRUE(accepts(j, R"({"a": [1, "é\n"]})"));
  Grammar r = Grammar::from_ebnf(Grammar::from_regex("^[\\w.]+@\\S+$").to_ebnf());
  EXPECT_TRUE(accepts(r, "a.b@c"));
}

}  // namespace
}  // namespace agentrt::grammars
