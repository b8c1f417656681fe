// Shared helpers for the grammar tests: a small synthetic vocabulary, a greedy tokenizer over
// it, and the brute-force reference mask (each token tried on its own).
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "grammars/compiled_grammar.h"
#include "grammars/matcher.h"
#include "grammars/tokenizer_index.h"

namespace agentrt::grammars::testing {

// Ids 0-255 are the single bytes, then `extra`, then a stop token and a special token.
inline Vocabulary small_vocabulary(const std::vector<std::string>& extra) {
  Vocabulary v;
  for (int b = 0; b < 256; ++b) v.token_bytes.push_back(std::string(1, static_cast<char>(b)));
  for (const std::string& s : extra) v.token_bytes.push_back(s);
  v.stop_tokens.push_back(static_cast<int32_t>(v.token_bytes.size()));
  v.token_bytes.push_back("</s>");
  v.special_tokens.push_back(static_cast<int32_t>(v.token_bytes.size()));
  v.token_bytes.push_back("<s>");
  return v;
}

// Multi-byte tokens typical of JSON and code, including ones that span several terminals and
// ones that end inside a UTF-8 character.
inline std::vector<std::string> json_like_tokens() {
  std::vector<std::string> t = {"{\"",      "\":",
                                "\": ",     "\",",
                                "\", \"",   "\"}",
                                "\"]",      "},",
                                "}]",       "[{",
                                "[\"",      "true",
                                "false",    "null",
                                "tr",       "ue",
                                "fa",       "lse",
                                "nu",       "ll",
                                "12",       "123",
                                "0.",       ".5",
                                "e+",       "E-",
                                "-1",       "  ",
                                "    ",     "\n",
                                "\n  ",     ", ",
                                ",\"",      "name",
                                "age",      "\"name",
                                "\"age\":", "\\n",
                                "\\\"",     "\\u00",
                                "é",        "\xC3",
                                "\xA9\"",   "日本",
                                "\xE6\x97", "\xA5\xE6\x9C\xAC",
                                "abc",      "ab",
                                "a\"",      "\"a",
                                "\"\"",     "{}",
                                "[]",       " {",
                                " [",       " \"",
                                "x",        "xy",
                                "1,",       "2]",
                                "3}",       "hello",
                                " world",   "+",
                                "*",        "(",
                                ")",        "((",
                                "))",       "1+",
                                "+2",       "*(",
                                "e4",       "Qh",
                                "Nf3",      " e4",
                                "O-O",      "cat",
                                "dog",      "- ",
                                "\n- ",     "item"};
  return t;
}

inline std::shared_ptr<const TokenizerIndex> small_index() {
  return TokenizerIndex::build(small_vocabulary(json_like_tokens()));
}

// Greedy longest-match tokenization (not BPE, but always a valid token sequence).
inline std::vector<int32_t> greedy_tokenize(const Vocabulary& v, std::string_view text,
                                            std::mt19937* rng = nullptr) {
  std::vector<int32_t> out;
  size_t pos = 0;
  while (pos < text.size()) {
    int32_t best = -1;
    size_t best_len = 0;
    for (size_t id = 0; id < v.token_bytes.size(); ++id) {
      const std::string& t = v.token_bytes[id];
      if (std::find(v.stop_tokens.begin(), v.stop_tokens.end(), id) != v.stop_tokens.end() ||
          std::find(v.special_tokens.begin(), v.special_tokens.end(), id) != v.special_tokens.end())
        continue;
      if (t.size() > best_len && text.substr(pos, t.size()) == t) {
        best = static_cast<int32_t>(id);
        best_len = t.size();
      }
    }
    // Occasionally take a single byte instead, to exercise other splits.
    if (rng && best_len > 1 && (*rng)() % 4 == 0) {
      best = static_cast<uint8_t>(text[pos]);
      best_len = 1;
    }
    out.push_back(best);
    pos += best_len;
  }
  return out;
}

inline std::vector<uint32_t> fast_mask(const GrammarMatcher& m) {
  std::vector<uint32_t> mask(m.mask_words(), 0xDEADBEEF);
  m.fill_next_token_bitmask(mask.data());
  return mask;
}

inline std::vector<uint32_t> reference_mask(const GrammarMatcher& m, size_t vocab_size) {
  std::vector<uint32_t> mask(m.mask_words(), 0);
  for (size_t id = 0; id < vocab_size; ++id) {
    if (m.is_token_allowed(static_cast<int32_t>(id))) mask[id / 32] |= 1u << (id % 32);
  }
  return mask;
}

inline bool bit(const std::vector<uint32_t>& mask, int32_t id) {
  return (mask[id / 32] >> (id % 32)) & 1u;
}

inline std::string read_fixture(const std::string& name) {
  std::ifstream in(std::string(AGENTRT_SOURCE_DIR) + "/tests/grammars/fixtures/" + name);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace agentrt::grammars::testing
