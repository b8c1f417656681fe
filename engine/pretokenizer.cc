#include "engine/pretokenizer.h"

#include <optional>

namespace agentrt::engine {

namespace {

// A piece decoded into characters once, so the three splits do not re-decode UTF-8.
struct Char {
  char32_t cp;
  uint32_t offset;  // byte offset in the text
  CharClass cls;
  bool space;
};

// A matcher returns the end (exclusive, in chars) of a match starting at `i`, or nullopt.
using Matcher = std::optional<size_t> (*)(const std::vector<Char>&, size_t begin, size_t end,
                                          size_t i);

std::optional<size_t> match_digits(const std::vector<Char>& c, size_t, size_t end, size_t i) {
  size_t j = i;
  while (j < end && j - i < 3 && c[j].cls == CharClass::number) ++j;
  return j > i ? std::optional<size_t>(j) : std::nullopt;
}

bool is_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x309F) ||
         (cp >= 0x30A0 && cp <= 0x30FF);
}

std::optional<size_t> match_cjk(const std::vector<Char>& c, size_t, size_t end, size_t i) {
  size_t j = i;
  while (j < end && is_cjk(c[j].cp)) ++j;
  return j > i ? std::optional<size_t>(j) : std::nullopt;
}

bool is_ascii_punct(char32_t cp) {
  return (cp >= '!' && cp <= '/') || (cp >= ':' && cp <= '@') || (cp >= '[' && cp <= '`') ||
         (cp >= '{' && cp <= '~');
}
bool is_ascii_letter(char32_t cp) { return (cp >= 'A' && cp <= 'Z') || (cp >= 'a' && cp <= 'z'); }
bool is_letter_or_mark(const Char& ch) {
  return ch.cls == CharClass::letter || ch.cls == CharClass::mark;
}
bool is_punct_or_symbol(const Char& ch) {
  return ch.cls == CharClass::punct || ch.cls == CharClass::symbol;
}
bool is_newline(char32_t cp) { return cp == '\r' || cp == '\n'; }

// The main pattern; alternatives are tried in order at each start (leftmost-first, as
// Oniguruma does), each with the backtracking its quantifiers imply.
std::optional<size_t> match_main(const std::vector<Char>& c, size_t, size_t end, size_t i) {
  // [punct][A-Za-z]+
  if (is_ascii_punct(c[i].cp) && i + 1 < end && is_ascii_letter(c[i + 1].cp)) {
    size_t j = i + 1;
    while (j < end && is_ascii_letter(c[j].cp)) ++j;
    return j;
  }
  // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
  {
    const Char& ch = c[i];
    const bool optional_ok = !is_newline(ch.cp) && ch.cls != CharClass::letter &&
                             ch.cls != CharClass::punct && ch.cls != CharClass::symbol;
    if (optional_ok && i + 1 < end && is_letter_or_mark(c[i + 1])) {
      size_t j = i + 1;
      while (j < end && is_letter_or_mark(c[j])) ++j;
      return j;
    }
    if (is_letter_or_mark(ch)) {
      size_t j = i;
      while (j < end && is_letter_or_mark(c[j])) ++j;
      return j;
    }
  }
  // ' '?[\p{P}\p{S}]+[\r\n]*
  {
    size_t j = i;
    if (c[j].cp == ' ' && j + 1 < end && is_punct_or_symbol(c[j + 1])) ++j;
    if (is_punct_or_symbol(c[j])) {
      while (j < end && is_punct_or_symbol(c[j])) ++j;
      while (j < end && is_newline(c[j].cp)) ++j;
      return j;
    }
  }
  if (!c[i].space) return std::nullopt;
  size_t run_end = i;
  while (run_end < end && c[run_end].space) ++run_end;
  // \s*[\r\n]+ : through the last newline of the whitespace run.
  for (size_t k = run_end; k > i; --k) {
    if (is_newline(c[k - 1].cp)) return k;
  }
  // \s+(?!\S) : the run, less its last character when a non-space follows.
  if (run_end == end) return run_end;
  if (run_end - i >= 2) return run_end - 1;
  // \s+
  return run_end;
}

// Isolated split: matches and the gaps between them both become pieces.
void split_isolated(const std::vector<Char>& chars, const std::vector<size_t>& bounds_in,
                    Matcher matcher, std::vector<size_t>& bounds_out) {
  bounds_out.clear();
  bounds_out.push_back(0);
  for (size_t p = 0; p + 1 < bounds_in.size(); ++p) {
    const size_t begin = bounds_in[p], end = bounds_in[p + 1];
    size_t i = begin;
    while (i < end) {
      const auto m = matcher(chars, begin, end, i);
      if (!m) {
        ++i;
        continue;
      }
      if (bounds_out.back() != i) bounds_out.push_back(i);
      bounds_out.push_back(*m);
      i = *m;
    }
    if (bounds_out.back() != end) bounds_out.push_back(end);
  }
}

}  // namespace

void pretokenize(std::string_view text, const UnicodeClasses& classes,
                 std::vector<std::string_view>& pieces) {
  if (text.empty()) return;
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const DecodedChar d = decode_utf8_char(text, pos);
    chars.push_back(
        {d.cp, static_cast<uint32_t>(pos), classes.of(d.cp), !d.invalid && is_regex_space(d.cp)});
    pos += d.len;
  }
  std::vector<size_t> a{0, chars.size()}, b;
  split_isolated(chars, a, match_digits, b);
  split_isolated(chars, b, match_cjk, a);
  split_isolated(chars, a, match_main, b);
  const auto offset = [&](size_t ci) { return ci < chars.size() ? chars[ci].offset : text.size(); };
  for (size_t p = 0; p + 1 < b.size(); ++p) {
    const size_t from = offset(b[p]), to = offset(b[p + 1]);
    pieces.push_back(text.substr(from, to - from));
  }
}

}  // namespace agentrt::engine
