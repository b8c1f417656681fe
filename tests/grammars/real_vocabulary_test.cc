// The fast mask against the brute-force one on the real 128K DeepSeek vocabulary.
#include <gtest/gtest.h>

#include <filesystem>

#include "grammar_sampler.h"
#include "grammar_test_support.h"
#include "grammars/hf_vocabulary.h"
#include "grammars/json_schema.h"
#include "grammars/maskbench_runner.h"

namespace agentrt::grammars {
namespace {

class RealVocabularyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string path = std::string(AGENTRT_HOME) + "/models/deepseek-v3-tokenizer/tokenizer.json";
    if (std::filesystem::exists(path)) index_ = TokenizerIndex::build(load_hf_vocabulary(path));
  }
  void SetUp() override {
    if (!index_) GTEST_SKIP() << "no DeepSeek tokenizer (scripts/setup.sh fetches it)";
  }
  static inline std::shared_ptr<const TokenizerIndex> index_;
};

TEST_F(RealVocabularyTest, JsonMasksMatchBruteForce) {
  Grammar g = Grammar::from_ebnf(testing::read_fixture("json.gbnf"));
  auto cg = compile(g, index_);
  testing::GrammarSampler sampler(g, 11);
  size_t vocab = index_->vocab_size();
  int checked = 0;
  std::string doc;
  for (int n = 0; n < 6 && checked < 24; ++n) {
    if (!sampler.sample(doc)) continue;
    std::vector<int32_t> tokens = longest_match_tokenize(*index_, doc);
    GrammarMatcher m(cg);
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i % 3 == 0 && checked < 24) {
        ASSERT_EQ(testing::fast_mask(m), testing::reference_mask(m, vocab))
            << "after " << i << " tokens of " << doc;
        ++checked;
      }
      ASSERT_TRUE(m.accept_token(tokens[i])) << doc;
    }
    EXPECT_TRUE(m.can_end());
  }
  EXPECT_GT(checked, 5);
}

// Object keys that may still become additional properties enter the rest-of-string rule on
// their first bytes: those walks are cached per grammar (position_masks.h SubtreeMasksCache)
// and continued from the real stack after the string ends.
TEST_F(RealVocabularyTest, SchemaKeyMasksMatchBruteForce) {
  auto schema = nlohmann::ordered_json::parse(R"({"type":"object","properties":{
      "alpha":{"type":"integer"},"alphabet":{"type":"string"},"beta":{"enum":["x","y"]}},
      "additionalProperties":{"type":"boolean"}})");
  JsonSchemaOptions options;
  options.whitespace = JsonSchemaOptions::Whitespace::flexible;
  auto cg = compile(grammar_from_json_schema(schema, options), index_);
  size_t vocab = index_->vocab_size();
  for (const std::string doc : {R"({"alphabet": "ab\"c", "alpha": 12, "al": true, "beta": "y"})",
                                R"({"gamma": false, "beta": "x", "été": true, "a\\nb": false})"}) {
    std::vector<int32_t> tokens = longest_match_tokenize(*index_, doc);
    GrammarMatcher m(cg);
    for (size_t i = 0; i < tokens.size(); ++i) {
      ASSERT_EQ(testing::fast_mask(m), testing::reference_mask(m, vocab))
          << "after " << i << " tokens of " << doc;
      ASSERT_TRUE(m.accept_token(tokens[i])) << doc;
    }
    EXPECT_TRUE(m.can_end());
  }
}

// Long counted strings repeat a rule per character (pushdown_automaton.cc RepeatHoister): the
// tokens past the return from that rule are kept per signature of the stack below
// (matcher.cc tokens_past_returns), checked here at every token of long values.
TEST_F(RealVocabularyTest, CountedStringMasksMatchBruteForce) {
  auto schema = nlohmann::ordered_json::parse(R"({"type":"object","properties":{
      "d":{"type":"string","maxLength":30000},"c":{"type":"string","minLength":40,"maxLength":30000}},
      "required":["d","c"],"additionalProperties":false})");
  JsonSchemaOptions options;
  options.whitespace = JsonSchemaOptions::Whitespace::flexible;
  auto cg = compile(grammar_from_json_schema(schema, options), index_);
  const std::string doc =
      R"({"d": "This is an example certificate.", "c": "-----BEGIN CERTIFICATE-----\nMIIDdTCCAl2gAwIBAgIVAMIIujU9wQIBADANBgkq"})";
  std::vector<int32_t> tokens = longest_match_tokenize(*index_, doc);
  GrammarMatcher m(cg);
  for (size_t i = 0; i < tokens.size(); ++i) {
    ASSERT_EQ(testing::fast_mask(m), testing::reference_mask(m, index_->vocab_size()))
        << "after " << i << " tokens of " << doc;
    ASSERT_TRUE(m.accept_token(tokens[i])) << doc;
  }
  EXPECT_TRUE(m.can_end());
}

// Results shared beyond one position: walks below trie nodes from grammar-independent states
// (the rest-of-string rule of additional-property keys) across grammars, and tokens past a
// return per return point and stack signatures across positions and matchers
// (past_return_tokens.h). Two schemas with different keys compiled against one tokenizer, each
// document checked twice (the second matcher meets warm caches); arrays of objects make many
// positions return into stacks that differ only deep down.
TEST_F(RealVocabularyTest, SharedWalksMatchBruteForce) {
  JsonSchemaOptions options;
  options.whitespace = JsonSchemaOptions::Whitespace::flexible;
  struct Case {
    const char* schema;
    const char* doc;
  };
  const Case cases[] = {
      {R"({"type":"array","items":{"type":"object","properties":{"name":{"type":"string"},
          "size":{"type":"integer"}},"additionalProperties":{"type":"string"}}})",
       R"([{"name": "a b", "size": 3, "nam": "x\"y"}, {"size": 4, "zé": "", "name": "c"}])"},
      {R"({"type":"object","properties":{"nested":{"type":"object","properties":{
          "key":{"type":"boolean"}},"additionalProperties":{"type":"number"}},
          "tags":{"type":"array","items":{"type":"string","maxLength":64}}},
          "additionalProperties":{"type":"array","items":{"type":"integer"}}})",
       R"({"tags": ["one", "two words", ""], "nested": {"ke": 1.5, "key": true}, "x": [1, 2]})"},
  };
  for (const Case& c : cases) {
    auto cg =
        compile(grammar_from_json_schema(nlohmann::ordered_json::parse(c.schema), options), index_);
    std::vector<int32_t> tokens = longest_match_tokenize(*index_, c.doc);
    for (int round = 0; round < 2; ++round) {
      GrammarMatcher m(cg);
      for (size_t i = 0; i < tokens.size(); ++i) {
        ASSERT_EQ(testing::fast_mask(m), testing::reference_mask(m, index_->vocab_size()))
            << "round " << round << ", after " << i << " tokens of " << c.doc;
        ASSERT_TRUE(m.accept_token(tokens[i])) << c.doc;
      }
      EXPECT_TRUE(m.can_end()) << c.doc;
    }
  }
}

}  // namespace
}  // namespace agentrt::grammars
