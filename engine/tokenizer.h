// Byte-level BPE tokenizer for Hugging Face tokenizer.json files of the DeepSeek-V3/V4 family:
// added tokens matched first (longest match), the DeepSeek pre-tokenizer (pretokenizer.h), then
// BPE merges by rank over raw bytes. Immutable after load; share it as shared_ptr<const>.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/unicode.h"

namespace agentrt::engine {

class Tokenizer {
 public:
  // dir_or_file: a folder holding tokenizer.json (and tokenizer_config.json for bos/eos), or
  // the tokenizer.json itself. Throws std::runtime_error naming the file and what is wrong.
  static std::shared_ptr<const Tokenizer> load(const std::filesystem::path& dir_or_file);

  // parse_special=false treats the text of added tokens (<｜User｜>, <｜end▁of▁sentence｜>, ...)
  // as plain text: user content can never inject a control token.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const;
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  // The exact bytes each id decodes to (added tokens: their content). Ids that no token uses
  // map to "".
  const std::vector<std::string>& token_bytes() const { return token_bytes_; }
  bool is_special(int32_t id) const;
  bool is_added(int32_t id) const;
  std::optional<int32_t> token_id(std::string_view token_text) const;
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  const std::filesystem::path& source() const { return source_; }

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  Tokenizer() = default;  // use load()

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special;
  };

  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  // Longest added token starting at `pos`, or nullptr.
  const AddedToken* match_added(std::string_view text, size_t pos) const;

  std::filesystem::path source_;
  std::vector<std::string> token_bytes_;
  std::unordered_map<std::string, int32_t> bytes_to_id_;  // merges-based vocab only
  std::unordered_map<uint64_t, Merge> merges_;            // (left id << 32 | right id)
  int32_t byte_token_[256] = {};
  std::vector<AddedToken> added_;          // sorted by content
  std::vector<uint8_t> added_first_byte_;  // 256 flags: some added token starts so
  std::vector<uint8_t> special_flags_;     // per id: 1 added, 2 special
  UnicodeClasses classes_;
  int32_t bos_id_ = 0;
  int32_t eos_id_ = 1;
};

// Turns a stream of ids into text without ever emitting a broken UTF-8 sequence: bytes of a
// character split across tokens are held back until it completes. Invalid bytes are passed
// through as they are (never dropped) once they can no longer start a valid character.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();

 private:
  std::shared_ptr<const Tokenizer> tokenizer_;
  bool skip_special_;
  std::string pending_;
};

// Length of the longest prefix of `bytes` that does not end inside an incomplete (but still
// possibly valid) UTF-8 sequence.
size_t complete_utf8_prefix(std::string_view bytes);

}  // namespace agentrt::engine
