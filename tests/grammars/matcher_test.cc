#include "grammars/matcher.h"

#include <gtest/gtest.h>

#include <thread>

#include "grammar_sampler.h"
#include "grammar_test_support.h"
#include "grammars/json_schema.h"

namespace agentrt::grammars {
namespace {

using testing::bit;
using testing::fast_mask;
using testing::greedy_tokenize;
using testing::read_fixture;
using testing::reference_mask;
using testing::small_vocabulary;

class MatcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vocab_ = small_vocabulary(testing::json_like_tokens());
    index_ = TokenizerIndex::build(vocab_);
    stop_ = vocab_.stop_tokens[0];
    special_ = vocab_.special_tokens[0];
  }
  std::shared_ptr<const CompiledGrammar> compiled(std::string_view ebnf) {
    return compile(Grammar::from_ebnf(ebnf), index_);
  }
  int32_t id_of(std::string_view bytes) const {
    for (size_t i = 0; i < vocab_.token_bytes.size(); ++i) {
      if (vocab_.token_bytes[i] == bytes) return static_cast<int32_t>(i);
    }
    ADD_FAILURE() << "no token " << bytes;
    return 0;
  }

  // Feeds `doc` token by token, comparing the fast mask with the brute-force one before each
  // token. Returns whether the whole document was accepted and complete.
  bool check_document(const std::shared_ptr<const CompiledGrammar>& g, const std::string& doc,
                      std::mt19937& rng) {
    GrammarMatcher m(g);
    std::vector<int32_t> tokens = greedy_tokenize(vocab_, doc, &rng);
    for (int32_t t : tokens) {
      std::vector<uint32_t> fast = fast_mask(m);
      std::vector<uint32_t> ref = reference_mask(m, vocab_.token_bytes.size());
      EXPECT_EQ(fast, ref) << "mask differs after " << m.num_accepted() << " tokens of " << doc;
      if (fast != ref) {
        for (size_t id = 0; id < vocab_.token_bytes.size(); ++id) {
          if (bit(fast, id) != bit(ref, id)) {
            ADD_FAILURE() << "token " << id << " '" << vocab_.token_bytes[id]
                          << "' fast=" << bit(fast, id) << " ref=" << bit(ref, id);
          }
        }
        return false;
      }
      if (!bit(ref, t)) {
        EXPECT_FALSE(m.accept_token(t));
        return false;
      }
      EXPECT_TRUE(m.accept_token(t));
    }
    std::vector<uint32_t> fast = fast_mask(m);
    EXPECT_EQ(fast, reference_mask(m, vocab_.token_bytes.size()));
    EXPECT_EQ(bit(fast, stop_), m.can_end());
    EXPECT_FALSE(bit(fast, special_));
    return m.can_end();
  }

  void property_test(const std::string& ebnf, int samples, uint32_t seed) {
    Grammar g = Grammar::from_ebnf(ebnf);
    auto cg = compile(g, index_);
    testing::GrammarSampler sampler(g, seed);
    int valid = 0, invalid_rejected = 0;
    std::string doc;
    for (int i = 0; i < samples; ++i) {
      if (!sampler.sample(doc)) continue;
      ++valid;
      EXPECT_TRUE(check_document(cg, doc, sampler.rng())) << "valid document rejected: " << doc;
      std::string bad = sampler.corrupt(doc);
      if (!check_document(cg, bad, sampler.rng())) ++invalid_rejected;
    }
    EXPECT_GT(valid, samples / 4);
    EXPECT_GT(invalid_rejected, 0);
  }

  Vocabulary vocab_;
  std::shared_ptr<const TokenizerIndex> index_;
  int32_t stop_ = 0, special_ = 0;
};

TEST_F(MatcherTest, MaskMatchesBruteForceOnJson) {
  property_test(read_fixture("json.gbnf"), 60, 1);
}
TEST_F(MatcherTest, MaskMatchesBruteForceOnArithmetic) {
  property_test(read_fixture("arithmetic.gbnf"), 60, 2);
}
TEST_F(MatcherTest, MaskMatchesBruteForceOnChess) {
  property_test(read_fixture("chess.gbnf"), 40, 3);
}
TEST_F(MatcherTest, MaskMatchesBruteForceOnList) {
  property_test(read_fixture("list.gbnf"), 40, 4);
}
TEST_F(MatcherTest, MaskMatchesBruteForceOnNestedNullables) {
  property_test(R"(root ::= a* b? "x" ws
a ::= b? "a"? c*
b ::= ws "b"
c ::= "c" | ws
ws ::= [ \n]*)",
                60, 5);
}
TEST_F(MatcherTest, MaskMatchesBruteForceOnRegexTerminals) {
  property_test(R"(root ::= "{" /"[a-z]{1,4}"/ ": " /-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/ "}")",
                60, 6);
}

TEST_F(MatcherTest, MaskMatchesBruteForceOnStampedRepetitions) {
  // Long counted strings, digits and rule calls (repeat_lowering.h), shared and not.
  property_test(R"(root ::= "{\"s\": " str ", \"n\": " [0-9]{1,250} ", \"l\": [" item{0,600} "]}"
str ::= "\"" ([^"\\] | "\\" ["\\nt]){0,300} "\""
item ::= "\"" ([^"\\] | "\\" ["\\nt]){0,300} "\"" ", ")",
                60, 7);
}

// Order-free objects (json_schema_objects.cc): each state calls every member it may take next
// as a rule, so while a key is read the parse holds one stack per candidate member (keys that
// share prefixes, and an additional-property key leaving them); masks against the brute-force
// reference on documents sampled from the grammar and corrupted ones.
TEST_F(MatcherTest, MaskMatchesBruteForceOnOrderFreeObjects) {
  const auto schema = nlohmann::ordered_json::parse(R"({"type":"object","properties":{
      "a":{"type":"integer"},"ab":{"type":"boolean"},"abc":{"enum":["x","yz"]},
      "name":{"type":"string","maxLength":3},"age":{"type":"object","properties":{
      "n":{"type":"null"},"na":{"type":"integer"}},"additionalProperties":false}},
      "required":["ab","name"],"additionalProperties":{"type":"boolean"}})");
  property_test(json_schema_to_ebnf(schema, JsonSchemaOptions{}), 80, 8);
}

TEST_F(MatcherTest, AcceptRollbackAndTermination) {
  GrammarMatcher m(compiled(R"(root ::= "true" | "false")"));
  EXPECT_FALSE(m.can_end());
  EXPECT_FALSE(m.accept_token(id_of("x")));
  EXPECT_FALSE(m.accept_token(stop_));
  EXPECT_EQ(m.num_accepted(), 0);
  EXPECT_TRUE(m.accept_token(id_of("tr")));
  EXPECT_TRUE(m.accept_token(id_of("ue")));
  EXPECT_TRUE(m.can_end());
  EXPECT_TRUE(bit(fast_mask(m), stop_));
  EXPECT_TRUE(m.accept_token(stop_));
  EXPECT_TRUE(m.is_terminated());
  EXPECT_FALSE(m.accept_token(id_of("x")));
  std::vector<uint32_t> none(m.mask_words(), 0);
  EXPECT_EQ(fast_mask(m), none);
  m.rollback(2);
  EXPECT_FALSE(m.is_terminated());
  EXPECT_FALSE(m.can_end());
  EXPECT_FALSE(m.accept_token(id_of("lse")));
  EXPECT_TRUE(m.accept_token(id_of("ue")));
  m.rollback(2);
  EXPECT_TRUE(m.accept_token(id_of("fa")));
  EXPECT_TRUE(m.accept_token(id_of("lse")));
  EXPECT_TRUE(m.can_end());
  EXPECT_THROW(m.rollback(5), std::out_of_range);
  m.reset();
  EXPECT_EQ(m.num_accepted(), 0);
  EXPECT_TRUE(m.accept_bytes("true"));
}

TEST_F(MatcherTest, TokensSpanningTerminalsAndRules) {
  GrammarMatcher m(compiled(R"(root ::= "[" item ("," item)* "]"
item ::= "{" "\"" [a-z]+ "\"" ":" [0-9]+ "}")"));
  // "[{" spans two rules; "\":" spans the end of a string and the colon.
  for (std::string_view t :
       {"[{", "\"", "ab", "\":", "12", "3}", ",", "{\"", "x", "\":", "1", "}]"}) {
    EXPECT_TRUE(bit(fast_mask(m), id_of(t))) << t;
    EXPECT_TRUE(m.accept_token(id_of(t))) << t;
  }
  EXPECT_TRUE(m.can_end());
}

TEST_F(MatcherTest, SplitUtf8AcrossTokens) {
  GrammarMatcher m(compiled(R"(root ::= "\"" [^"\x00-\x7f]+ "\"")"));
  EXPECT_TRUE(m.accept_token(id_of("\"")));
  // "é" = C3 A9: the first token ends mid-character, the next completes it and closes the string.
  EXPECT_TRUE(bit(fast_mask(m), id_of("\xC3")));
  EXPECT_FALSE(bit(fast_mask(m), id_of("a")));
  EXPECT_TRUE(m.accept_token(id_of("\xC3")));
  std::vector<uint32_t> mask = fast_mask(m);
  EXPECT_TRUE(bit(mask, id_of("\xA9\"")));
  EXPECT_FALSE(bit(mask, id_of("\"")));  // a character cannot stop half-way
  EXPECT_FALSE(bit(mask, id_of("\xC3")));
  EXPECT_TRUE(m.accept_token(id_of("\xA9\"")));
  EXPECT_TRUE(m.can_end());
  // 日本 = E6 97 A5 E6 9C AC, split as E6 97 | A5 E6 9C AC.
  GrammarMatcher m2(compiled(R"(root ::= "日本")"));
  EXPECT_TRUE(m2.accept_token(id_of("\xE6\x97")));
  EXPECT_TRUE(m2.accept_token(id_of("\xA5\xE6\x9C\xAC")));
  EXPECT_TRUE(m2.can_end());
}

TEST_F(MatcherTest, JumpForward) {
  GrammarMatcher m(compiled(R"(root ::= "{\"name\": \"" [a-z]+ "\", \"age\": " [0-9]+ "}")"));
  EXPECT_EQ(m.find_jump_forward_bytes(), "{\"name\": \"");
  EXPECT_TRUE(m.accept_bytes("{\"name\": \"bob"));
  EXPECT_EQ(m.find_jump_forward_bytes(), "");
  EXPECT_TRUE(m.accept_bytes("\""));
  EXPECT_EQ(m.find_jump_forward_bytes(), ", \"age\": ");
  EXPECT_TRUE(m.accept_bytes(", \"age\": 7}"));
  EXPECT_EQ(m.find_jump_forward_bytes(), "");
  EXPECT_TRUE(m.can_end());
}

TEST_F(MatcherTest, StopTokensExactlyWhenComplete) {
  GrammarMatcher m(compiled(R"(root ::= [0-9]+ ("." [0-9]+)?)"));
  EXPECT_FALSE(bit(fast_mask(m), stop_));
  EXPECT_TRUE(m.accept_token(id_of("12")));
  EXPECT_TRUE(bit(fast_mask(m), stop_));
  EXPECT_TRUE(m.accept_token(id_of(".")));
  EXPECT_FALSE(bit(fast_mask(m), stop_));
  EXPECT_FALSE(bit(fast_mask(m), special_));
  EXPECT_FALSE(m.accept_token(special_));
}

TEST_F(MatcherTest, LazyTriggerString) {
  TriggerOptions lazy;
  lazy.trigger_strings = {"<call>"};
  GrammarMatcher m(compiled(R"(root ::= "<call>" [a-z]+ "</call>")"), lazy);
  EXPECT_FALSE(m.triggered());
  EXPECT_TRUE(m.can_end());
  std::vector<uint32_t> mask = fast_mask(m);
  EXPECT_TRUE(bit(mask, id_of("hello")));
  EXPECT_TRUE(bit(mask, stop_));
  EXPECT_FALSE(bit(mask, special_));
  EXPECT_TRUE(m.accept_token(id_of("hello")));
  EXPECT_TRUE(m.accept_token(id_of(" world")));
  EXPECT_TRUE(m.accept_bytes(" <ca"));
  EXPECT_FALSE(m.triggered());
  EXPECT_TRUE(m.accept_bytes("ll>ab"));
  EXPECT_TRUE(m.triggered());
  EXPECT_FALSE(m.can_end());
  mask = fast_mask(m);
  EXPECT_TRUE(bit(mask, id_of("hello")));
  EXPECT_FALSE(bit(mask, id_of(" world")));
  EXPECT_TRUE(bit(mask, id_of("x")));
  EXPECT_FALSE(bit(mask, id_of("1")));
  m.rollback(1);
  EXPECT_FALSE(m.triggered());
  EXPECT_TRUE(m.accept_bytes("ll>"));
  EXPECT_TRUE(m.accept_bytes("x</call>"));
  EXPECT_TRUE(m.can_end());
  // A trigger whose continuation the grammar rejects is refused.
  m.reset();
  EXPECT_FALSE(m.accept_bytes("<call>1"));
}

TEST_F(MatcherTest, LazyTriggerToken) {
  TriggerOptions lazy;
  lazy.trigger_tokens = {special_};
  GrammarMatcher m(compiled(R"(root ::= "x"+)"), lazy);
  EXPECT_TRUE(bit(fast_mask(m), special_));
  EXPECT_TRUE(m.accept_token(id_of("hello")));
  EXPECT_TRUE(m.accept_token(special_));
  EXPECT_TRUE(m.triggered());
  EXPECT_FALSE(m.accept_token(id_of("hello")));
  EXPECT_TRUE(m.accept_token(id_of("x")));
  EXPECT_TRUE(m.accept_token(stop_));
}

TEST_F(MatcherTest, ThreadsShareOneCompiledGrammar) {
  auto g = compiled(read_fixture("json.gbnf"));
  const std::string doc = R"({"name": "hello", "age": [12, 3.5e+3, true, null, {}]})";
  std::vector<int32_t> tokens = greedy_tokenize(vocab_, doc);
  std::vector<std::vector<uint32_t>> expected;
  {
    GrammarMatcher m(compiled(read_fixture("json.gbnf")));
    for (int32_t t : tokens) {
      expected.push_back(fast_mask(m));
      ASSERT_TRUE(m.accept_token(t));
    }
  }
  std::vector<std::jthread> threads;
  std::atomic<int> failures{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      GrammarMatcher m(g);
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (fast_mask(m) != expected[i] || !m.accept_token(tokens[i])) ++failures;
      }
      if (!m.can_end()) ++failures;
    });
  }
  threads.clear();
  EXPECT_EQ(failures.load(), 0);

  std::vector<GrammarMatcher> matchers;
  for (int k = 0; k < 5; ++k) matchers.emplace_back(g);
  for (int k = 0; k < 5; ++k) {
    for (int i = 0; i < k; ++i) ASSERT_TRUE(matchers[k].accept_token(tokens[i]));
  }
  std::vector<GrammarMatcher*> ptrs;
  for (GrammarMatcher& m : matchers) ptrs.push_back(&m);
  size_t words = matchers[0].mask_words();
  std::vector<uint32_t> masks(words * ptrs.size());
  fill_next_token_bitmask_batch(ptrs, masks.data(), 3);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(std::vector<uint32_t>(masks.begin() + k * words, masks.begin() + (k + 1) * words),
              expected[k]);
  }
}

}  // namespace
}  // namespace agentrt::grammars
