#include <gtest/gtest.h>
#include <unistd.h>

#include "tests/cli/cli_test_support.h"

namespace {

using agentrt::testing::run_cli;

const std::string kTokenizer = std::string(AGENTRT_HOME) + "/models/deepseek-v3-tokenizer";

TEST(TokenizeCli, TextToIdsAndBack) {
  if (!std::filesystem::exists(kTokenizer + "/tokenizer.json"))
    GTEST_SKIP() << "no tokenizer at " << kTokenizer;
  const auto ids = run_cli("tokenize --tokenizer " + kTokenizer, "Hello, world!");
  ASSERT_EQ(ids.exit_code, 0);
  EXPECT_EQ(ids.out, "[19923,14,2058,3]\n");
  const auto text = run_cli("detokenize --tokenizer " + kTokenizer, ids.out);
  ASSERT_EQ(text.exit_code, 0);
  EXPECT_EQ(text.out, "Hello, world!");
}

TEST(TokenizeCli, SpecialFlagParsesControlTokens) {
  if (!std::filesystem::exists(kTokenizer + "/tokenizer.json"))
    GTEST_SKIP() << "no tokenizer at " << kTokenizer;
  EXPECT_EQ(run_cli("tokenize --special --tokenizer " + kTokenizer, "<｜end▁of▁sentence｜>").out,
            "[1]\n");
  EXPECT_NE(run_cli("tokenize --tokenizer " + kTokenizer, "<｜end▁of▁sentence｜>").out, "[1]\n");
}

TEST(TokenizeCli, BadInputIsAClearError) {
  const auto r = run_cli("detokenize --tokenizer " + kTokenizer, "[1, \"x\"]", true);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.out.find("element 1"), std::string::npos) << r.out;
  EXPECT_EQ(run_cli("tokenize --bogus").exit_code, 2);
}

}  // namespace
