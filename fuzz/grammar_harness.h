// What the grammar fuzz targets share: a byte-level vocabulary, the input's split into grammar
// text and bytes for a matcher, and a matcher fed up to 64 of those bytes (mask, then accept,
// then the jump-forward string). GrammarErrors are the caller's to catch.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "grammars/compiled_grammar.h"
#include "grammars/grammar.h"
#include "grammars/matcher.h"

namespace agentrt::fuzz {

// Every single byte as a token, then `extra` multi-byte tokens, then a stop token.
inline std::shared_ptr<const grammars::TokenizerIndex> byte_index(
    const std::vector<std::string>& extra) {
  grammars::Vocabulary v;
  for (int b = 0; b < 256; ++b) v.token_bytes.push_back(std::string(1, static_cast<char>(b)));
  for (const std::string& t : extra) v.token_bytes.push_back(t);
  v.token_bytes.push_back("</s>");
  v.stop_tokens.push_back(int32_t(v.token_bytes.size()) - 1);
  return grammars::TokenizerIndex::build(v);
}

// The text before "\n---\n" and what follows it (empty where there is no such line).
inline std::pair<std::string_view, std::string_view> split_input(std::string_view text) {
  const size_t cut = text.find("\n---\n");
  if (cut == std::string_view::npos) return {text, {}};
  return {text.substr(0, cut), text.substr(cut + 5)};
}

inline void run_matcher(const grammars::Grammar& g,
                        const std::shared_ptr<const grammars::TokenizerIndex>& index,
                        std::string_view input) {
  grammars::GrammarMatcher m(grammars::compile(g, index));
  std::vector<uint32_t> mask(m.mask_words());
  for (char c : input.substr(0, 64)) {
    m.fill_next_token_bitmask(mask.data());
    if (!m.accept_bytes(std::string_view(&c, 1))) break;
  }
  (void)m.find_jump_forward_bytes();
}

}  // namespace agentrt::fuzz
