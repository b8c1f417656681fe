#include "engine/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

namespace agentrt::engine {
namespace {

const std::filesystem::path kTokenizerDir =
    std::filesystem::path(AGENTRT_HOME) / "models" / "deepseek-v3-tokenizer";

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(kTokenizerDir / "tokenizer.json"))
      tokenizer_ = Tokenizer::load(kTokenizerDir);
  }
  void SetUp() override {
    if (!tokenizer_)
      GTEST_SKIP() << "tokenizer not found at " << kTokenizerDir << " (run scripts/setup.sh)";
  }
  static std::shared_ptr<const Tokenizer> tokenizer_;
};
std::shared_ptr<const Tokenizer> TokenizerTest::tokenizer_;

std::string base64_decode(const std::string& in) {
  static const std::string chars =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  int val = 0, bits = -8;
  for (char c : in) {
    const auto pos = chars.find(c);
    if (pos == std::string::npos) break;
    val = (val << 6) + static_cast<int>(pos);
    bits += 6;
    if (bits >= 0) {
      out.push_back(static_cast<char>((val >> bits) & 0xFF));
      bits -= 8;
    }
  }
  return out;
}

TEST_F(TokenizerTest, MatchesHuggingFaceTokenizersGolden) {
  const auto path =
      std::filesystem::path(AGENTRT_SOURCE_DIR) / "tests/engine/fixtures/tokenizer/golden.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  const auto doc = nlohmann::json::parse(in);
  ASSERT_GE(doc["cases"].size(), 50u);
  for (const auto& c : doc["cases"]) {
    const std::string text = base64_decode(c["text_b64"].get<std::string>());
    const auto expected = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->encode(text, /*parse_special=*/true), expected) << "text: " << text;
    EXPECT_EQ(tokenizer_->decode(expected), text);
  }
}

TEST_F(TokenizerTest, SpecialTokenTextIsPlainUnlessAsked) {
  const std::string text = "hi <｜end▁of▁sentence｜> there <｜User｜>";
  const auto plain = tokenizer_->encode(text, false);
  for (int32_t id : plain) EXPECT_FALSE(tokenizer_->is_added(id)) << id;
  EXPECT_EQ(tokenizer_->decode(plain), text);
  const auto special = tokenizer_->encode(text, true);
  EXPECT_NE(std::find(special.begin(), special.end(), tokenizer_->eos_id()), special.end());
  EXPECT_EQ(tokenizer_->decode(special), text);
}

TEST_F(TokenizerTest, BosEosAndVocabulary) {
  EXPECT_EQ(tokenizer_->bos_id(), 0);
  EXPECT_EQ(tokenizer_->eos_id(), 1);
  EXPECT_EQ(tokenizer_->vocab_size(), 128815);
  EXPECT_TRUE(tokenizer_->is_special(0));
  EXPECT_EQ(tokenizer_->token_bytes()[0], "<｜begin▁of▁sentence｜>");
  const auto assistant = tokenizer_->token_id("<｜Assistant｜>");
  ASSERT_TRUE(assistant.has_value());
  EXPECT_TRUE(tokenizer_->is_added(*assistant));
  EXPECT_FALSE(tokenizer_->token_id("<｜no such token｜>").has_value());
  // Every byte has a single-byte token; token_bytes round-trips through decode.
  for (int b = 0; b < 256; ++b) {
    const std::string s(1, static_cast<char>(b));
    const auto ids = tokenizer_->encode(s);
    ASSERT_EQ(ids.size(), 1u);
    EXPECT_EQ(tokenizer_->token_bytes()[ids[0]], s);
  }
}

TEST_F(TokenizerTest, InvalidUtf8RoundTripsByteExactly) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    std::string s;
    const int n = 1 + rng() % 40;
    for (int i = 0; i < n; ++i) {
      const int kind = rng() % 4;
      if (kind == 0)
        s.push_back(static_cast<char>(rng() % 256));
      else if (kind == 1)
        s += "é";
      else if (kind == 2)
        s += "\xF0\x9F";  // a truncated 4-byte sequence
      else
        s += " ab";
    }
    EXPECT_EQ(tokenizer_->decode(tokenizer_->encode(s)), s);
  }
}

TEST_F(TokenizerTest, StreamingDecoderNeverSplitsACharacter) {
  const std::string text = "emoji 🤷🏽‍♀️ 你好 é\xFF end";
  const auto ids = tokenizer_->encode(text);
  StreamingDecoder decoder(tokenizer_);
  std::string out;
  for (int32_t id : ids) {
    const std::string piece = decoder.push(id);
    out += piece;
    // Everything emitted so far is valid UTF-8 except the invalid byte \xFF, passed through.
    EXPECT_EQ(complete_utf8_prefix(out), out.size());
  }
  out += decoder.flush();
  EXPECT_EQ(out, text);
}

TEST(Utf8Prefix, HoldsBackOnlyWhatCanStillComplete) {
  EXPECT_EQ(complete_utf8_prefix("ab"), 2u);
  EXPECT_EQ(complete_utf8_prefix("a\xE4\xBD"), 1u);      // 你 missing its last byte
  EXPECT_EQ(complete_utf8_prefix("a\xF0\x9F\xA4"), 1u);  // 4-byte emoji, 3 bytes so far
  EXPECT_EQ(complete_utf8_prefix("a\xE0\x80"), 3u);      // overlong: can never complete
  EXPECT_EQ(complete_utf8_prefix("a\xFF"), 2u);          // invalid lead byte
}

TEST(TokenizerLoad, MissingOrCorruptFileIsNamedInTheError) {
  const auto dir = std::filesystem::temp_directory_path() / "agentrt_tok_test";
  std::filesystem::create_directories(dir);
  try {
    Tokenizer::load(dir / "nope.json");
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.json"), std::string::npos);
  }
  std::ofstream(dir / "tokenizer.json") << "{ not json";
  try {
    Tokenizer::load(dir);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos);
  }
  std::ofstream(dir / "tokenizer.json")
      << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  EXPECT_THROW(Tokenizer::load(dir), std::runtime_error);  // lacks byte tokens
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace agentrt::engine
