// UTF-8 helpers: decoding with offsets for error messages, encoding, and the split of a code
// point range into byte-range sequences (the way a byte automaton matches a character class).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace agentrt::grammars {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// Decodes the code point at text[pos] and advances pos; returns -1 on malformed UTF-8.
int32_t decode_utf8(std::string_view text, size_t& pos);
void append_utf8(std::string& out, uint32_t code_point);

struct ByteRange {
  uint8_t lo = 0, hi = 0;
};
// Byte-range sequences whose union is exactly the UTF-8 encodings of [lo, hi] (no surrogates
// expected in the input range).
std::vector<std::vector<ByteRange>> utf8_sequences(uint32_t lo, uint32_t hi);

}  // namespace agentrt::grammars
