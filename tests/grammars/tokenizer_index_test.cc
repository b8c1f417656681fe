#include "grammars/tokenizer_index.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "grammars/hf_vocabulary.h"
#include "grammars/maskbench_runner.h"

namespace agentrt::grammars {
namespace {

std::string tokenizer_json() {
  return std::string(AGENTRT_HOME) + "/models/deepseek-v3-tokenizer/tokenizer.json";
}

TEST(ByteTrie, PreorderWithSubtreeEnds) {
  ByteTrie trie({"ab", "a", "b", "abc", "ab", ""}, {0, 1, 2, 3, 4, 5});
  const auto& n = trie.nodes();
  // root, a, ab, abc, b
  ASSERT_EQ(n.size(), 5u);
  EXPECT_EQ(n[0].end, 5u);
  EXPECT_EQ(n[1].byte, 'a');
  EXPECT_EQ(n[1].end, 4u);
  EXPECT_EQ(n[2].depth, 2);
  EXPECT_EQ(n[2].values_end - n[2].values_begin, 2u);  // "ab" twice
  EXPECT_EQ(n[4].byte, 'b');
  EXPECT_EQ(trie.values()[n[0].values_begin], 5);  // the empty key at the root
  EXPECT_EQ(trie.max_depth(), 3u);
}

TEST(TokenizerIndex, KindsAndTries) {
  Vocabulary v;
  v.token_bytes = {"a", "ab", "", "</s>", "<s>", std::string(40, 'x')};
  v.stop_tokens = {3};
  v.special_tokens = {4};
  auto index = TokenizerIndex::build(v);
  EXPECT_EQ(index->vocab_size(), 6u);
  EXPECT_EQ(index->mask_words(), 1u);
  EXPECT_TRUE(index->is_stop(3));
  EXPECT_TRUE(index->is_special(4));
  EXPECT_EQ(index->trie().values().size(), 3u);  // a, ab, x*40: not empty, stop or special
  EXPECT_EQ(index->short_trie().values().size(), 2u);
  EXPECT_EQ(index->long_trie().values().size(), 1u);
  EXPECT_EQ(longest_match_tokenize(*index, "aba"), (std::vector<int32_t>{1, 0}));
  EXPECT_THROW(longest_match_tokenize(*index, "q"), std::runtime_error);
  v.stop_tokens = {9};
  EXPECT_THROW(TokenizerIndex::build(v), std::invalid_argument);
}

TEST(HfVocabulary, ByteLevelDecode) {
  EXPECT_EQ(byte_level_decode("Ġhello"), " hello");
  EXPECT_EQ(byte_level_decode("Ċ"), "\n");
  EXPECT_EQ(byte_level_decode("Ã©"), "\xC3\xA9");
  EXPECT_THROW(byte_level_decode("｜"), std::runtime_error);
}

TEST(HfVocabulary, DeepSeekTokenizer) {
  if (!std::filesystem::exists(tokenizer_json())) {
    GTEST_SKIP() << "no tokenizer at " << tokenizer_json() << " (scripts/setup.sh fetches it)";
  }
  Vocabulary v = load_hf_vocabulary(tokenizer_json());
  EXPECT_GE(v.token_bytes.size(), 128000u);
  EXPECT_EQ(v.token_bytes[1], "<｜end▁of▁sentence｜>");
  EXPECT_EQ(v.stop_tokens, std::vector<int32_t>{1});
  EXPECT_FALSE(v.special_tokens.empty());
  auto index = TokenizerIndex::build(std::move(v));
  std::vector<int32_t> ids = longest_match_tokenize(*index, R"({"name": "héllo 日本"})");
  std::string back;
  for (int32_t id : ids) back += index->vocabulary().token_bytes[id];
  EXPECT_EQ(back, R"({"name": "héllo 日本"})");
}

}  // namespace
}  // namespace agentrt::grammars
