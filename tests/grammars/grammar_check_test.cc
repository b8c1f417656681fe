#include "grammars/grammar_check.h"

#include <gtest/gtest.h>

namespace agentrt::grammars {
namespace {

TEST(GrammarCheck, AcceptsAndLocatesTheFirstBadByte) {
  Grammar g = Grammar::from_ebnf(R"(root ::= "{\"id\": " [0-9]+ "}")");
  EXPECT_TRUE(check_text(g, R"({"id": 42})").accepted);
  CheckResult bad = check_text(g, R"({"id": x})");
  EXPECT_FALSE(bad.accepted);
  EXPECT_EQ(bad.byte, 7u);
  EXPECT_EQ(bad.reason, "unexpected 'x'");
  CheckResult short_text = check_text(g, R"({"id)");
  EXPECT_EQ(short_text.byte, 4u);
  EXPECT_EQ(short_text.reason, R"x(unexpected end of input (expected "": "))x");
  CheckResult extra = check_text(g, "{\"id\": 1}\n");
  EXPECT_EQ(extra.byte, 9u);
  EXPECT_EQ(extra.reason, "unexpected byte 0x0A after a complete document");
}

TEST(GrammarCheck, Utf8IsCheckedPerByte) {
  Grammar g = Grammar::from_ebnf(R"(root ::= [a-zé]+)");
  EXPECT_TRUE(check_text(g, "café").accepted);
  CheckResult bad = check_text(g, "caf\xC3\xA8");  // è: the second byte is wrong
  EXPECT_EQ(bad.byte, 4u);
}

}  // namespace
}  // namespace agentrt::grammars
