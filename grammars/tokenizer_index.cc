#include "grammars/tokenizer_index.h"

#include <stdexcept>
#include <string>

namespace agentrt::grammars {

std::shared_ptr<const TokenizerIndex> TokenizerIndex::build(Vocabulary vocab) {
  auto index = std::make_shared<TokenizerIndex>();
  size_t n = vocab.token_bytes.size();
  index->kind_.assign(n, TokenKind::kText);
  auto mark = [&](const std::vector<int32_t>& ids, TokenKind kind, const char* what) {
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= n) {
        throw std::invalid_argument(std::string("TokenizerIndex: ") + what + " id " +
                                    std::to_string(id) + " outside the vocabulary of " +
                                    std::to_string(n));
      }
      index->kind_[id] = kind;
    }
  };
  mark(vocab.special_tokens, TokenKind::kSpecial, "special token");
  mark(vocab.stop_tokens, TokenKind::kStop, "stop token");
  std::vector<std::string_view> keys;
  std::vector<int32_t> ids;
  for (size_t i = 0; i < n; ++i) {
    if (index->kind_[i] != TokenKind::kText) continue;
    if (vocab.token_bytes[i].empty()) {
      index->kind_[i] = TokenKind::kEmpty;
      continue;
    }
    keys.push_back(vocab.token_bytes[i]);
    ids.push_back(static_cast<int32_t>(i));
  }
  index->vocab_ = std::move(vocab);
  // Keys view the strings now owned by index->vocab_ (moving a vector keeps its buffers, but
  // short strings live inside the std::string object, so re-point the views).
  keys.clear();
  for (int32_t id : ids) keys.push_back(index->vocab_.token_bytes[id]);
  index->trie_ = ByteTrie(keys, ids);
  std::vector<std::string_view> short_keys, long_keys;
  std::vector<int32_t> short_ids, long_ids;
  for (size_t i = 0; i < keys.size(); ++i) {
    bool is_short = keys[i].size() <= kShortTokenBytes;
    (is_short ? short_keys : long_keys).push_back(keys[i]);
    (is_short ? short_ids : long_ids).push_back(ids[i]);
  }
  index->short_trie_ = ByteTrie(short_keys, short_ids);
  index->long_trie_ = ByteTrie(long_keys, long_ids);
  return index;
}

}  // namespace agentrt::grammars
