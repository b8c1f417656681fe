#include "engine/unicode.h"

namespace agentrt::engine {

namespace {

struct ClassRange {
  char32_t first;
  char32_t last;
  uint8_t cls;
};

// Generated from the Unicode Character Database (scripts/gen_unicode_tables.py).
constexpr ClassRange kClassRanges[] = {
#include "engine/unicode_tables.inc"
};

}  // namespace

DecodedChar decode_utf8_char(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  const DecodedChar invalid{0xFFFD, 1, true};
  if (b0 < 0x80) return {b0, 1, false};
  int len;
  char32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return invalid;
  }
  if (pos + len > text.size()) return invalid;
  for (int i = 1; i < len; ++i) {
    const unsigned char b = byte(pos + i);
    if ((b & 0xC0) != 0x80) return invalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  // Overlong forms, surrogates and values past U+10FFFF are invalid.
  if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
      (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
    return invalid;
  }
  return {cp, static_cast<uint8_t>(len), false};
}

bool is_regex_space(char32_t cp) {
  if (cp <= 0x7F) return cp == ' ' || (cp >= '\t' && cp <= '\r');
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

UnicodeClasses::UnicodeClasses() : table_(0x110000, 0) {
  for (const auto& range : kClassRanges) {
    for (char32_t cp = range.first; cp <= range.last; ++cp) table_[cp] = range.cls;
  }
}

}  // namespace agentrt::engine
