// Unicode facts the DeepSeek pre-tokenizer needs: the general category of a code point
// (letter, mark, number, punctuation, symbol), the regex `\s` set, and lenient UTF-8 decoding
// that keeps invalid bytes (each becomes its own "character" so no input byte is ever lost).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace agentrt::engine {

enum class CharClass : uint8_t {
  other = 0,
  letter = 1,
  mark = 2,
  number = 3,
  punct = 4,
  symbol = 5
};

// A decoded character: its code point and its byte length in the input. Invalid UTF-8 bytes
// decode one at a time with `invalid` set (code point U+FFFD, the character Python would see).
struct DecodedChar {
  char32_t cp;
  uint8_t len;
  bool invalid;
};

DecodedChar decode_utf8_char(std::string_view text, size_t pos);

// Oniguruma's `\s` under Unicode: White_Space plus the ASCII controls \t..\r.
bool is_regex_space(char32_t cp);

// Category lookup table for all code points, built once (owned by the Tokenizer).
class UnicodeClasses {
 public:
  UnicodeClasses();
  CharClass of(char32_t cp) const {
    return cp < table_.size() ? CharClass(table_[cp]) : CharClass::other;
  }

 private:
  std::vector<uint8_t> table_;
};

}  // namespace agentrt::engine
