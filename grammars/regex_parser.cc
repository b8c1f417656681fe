#include "grammars/regex_parser.h"

#include <string>

#include "grammars/grammar.h"
#include "grammars/utf8.h"

namespace agentrt::grammars {
namespace {

const std::vector<CodePointRange>& digit_ranges() {
  static const std::vector<CodePointRange> r{{'0', '9'}};
  return r;
}
const std::vector<CodePointRange>& word_ranges() {
  static const std::vector<CodePointRange> r{{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
  return r;
}
// ECMAScript WhiteSpace + LineTerminator.
const std::vector<CodePointRange>& space_ranges() {
  static const std::vector<CodePointRange> r{
      {0x09, 0x0D},     {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
      {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
  return r;
}
// `.` excludes line terminators.
std::vector<CodePointRange> dot_ranges() {
  return complement_ranges({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}});
}

class RegexParser {
 public:
  explicit RegexParser(std::string_view p) : p_(p) {}

  Expr parse() {
    Expr e = parse_alternation(0, true);
    if (pos_ < p_.size()) fail("unmatched ')'");
    return e;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw GrammarError("regex /" + std::string(p_) + "/ at offset " + std::to_string(pos_) + ": " +
                       what);
  }
  bool at_end() const { return pos_ >= p_.size(); }
  char peek() const { return p_[pos_]; }
  static std::string nesting_error() {
    return "groups and quantifiers nested more than " + std::to_string(kMaxExprNesting) + " deep";
  }

  // at_start: nothing can have been matched before this point of the pattern.
  Expr parse_alternation(int depth, bool at_start) {
    std::vector<Expr> alts;
    alts.push_back(parse_sequence(depth, at_start));
    while (!at_end() && peek() == '|') {
      ++pos_;
      alts.push_back(parse_sequence(depth, at_start));
    }
    return Expr::alternation(std::move(alts));
  }

  Expr parse_sequence(int depth, bool at_start) {
    std::vector<Expr> items;
    while (!at_end() && peek() != '|' && peek() != ')') {
      char c = peek();
      if (c == '^') {
        // Only meaningful at the very start; the grammar matches whole strings anyway.
        if (!at_start || !items.empty()) fail("'^' is only supported at the start of the pattern");
        ++pos_;
        continue;
      }
      if (c == '$') {
        ++pos_;
        if (!at_end() && peek() != '|' && peek() != ')')
          fail("'$' is only supported at the end of the pattern");
        continue;
      }
      Expr atom = parse_atom(depth, at_start && items.empty());
      items.push_back(parse_quantifiers(std::move(atom), depth));
    }
    return Expr::sequence(std::move(items));
  }

  // Parses {m}, {m,}, {m,n} at pos_; returns false (pos_ unchanged) if it is not one.
  bool parse_braces(uint32_t& min, uint32_t& max) {
    size_t save = pos_;
    auto number = [&](uint32_t& out) {
      size_t start = pos_;
      uint64_t v = 0;
      while (!at_end() && peek() >= '0' && peek() <= '9') {
        v = v * 10 + (peek() - '0');
        if (v > 1000000) fail("repetition bound too large");
        ++pos_;
      }
      out = static_cast<uint32_t>(v);
      return pos_ > start;
    };
    ++pos_;  // '{'
    if (!number(min)) {
      pos_ = save;
      return false;
    }
    max = min;
    if (!at_end() && peek() == ',') {
      ++pos_;
      if (!number(max)) max = Expr::kUnbounded;
    }
    if (at_end() || peek() != '}') {
      pos_ = save;
      return false;
    }
    ++pos_;
    if (max < min) fail("repetition {m,n} with n < m");
    return true;
  }

  Expr parse_quantifiers(Expr atom, int depth) {
    while (!at_end()) {
      char c = peek();
      uint32_t min = 0, max = 0;
      if (c == '*') {
        min = 0, max = Expr::kUnbounded, ++pos_;
      } else if (c == '+') {
        min = 1, max = Expr::kUnbounded, ++pos_;
      } else if (c == '?') {
        min = 0, max = 1, ++pos_;
      } else if (c == '{' && parse_braces(min, max)) {
      } else {
        break;
      }
      if (!at_end() && peek() == '?') ++pos_;  // lazy: same language
      if (++depth > kMaxExprNesting) fail(nesting_error());
      atom = Expr::repeat(std::move(atom), min, max);
    }
    return atom;
  }

  uint32_t hex(size_t digits) {
    if (pos_ + digits > p_.size()) fail("truncated hex escape");
    uint32_t v = 0;
    for (size_t i = 0; i < digits; ++i) {
      char c = p_[pos_ + i];
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) fail("bad hex digit in escape");
      v = v * 16 + d;
    }
    pos_ += digits;
    return v;
  }

  // After a backslash. Returns true with `ranges` set for a class escape, else sets `cp`.
  bool parse_escape(bool in_class, uint32_t& cp, std::vector<CodePointRange>& ranges) {
    if (at_end()) fail("trailing backslash");
    char c = p_[pos_++];
    switch (c) {
      case 'd':
        ranges = digit_ranges();
        return true;
      case 'D':
        ranges = complement_ranges(digit_ranges());
        return true;
      case 'w':
        ranges = word_ranges();
        return true;
      case 'W':
        ranges = complement_ranges(word_ranges());
        return true;
      case 's':
        ranges = space_ranges();
        return true;
      case 'S':
        ranges = complement_ranges(space_ranges());
        return true;
      case 'n':
        cp = '\n';
        return false;
      case 'r':
        cp = '\r';
        return false;
      case 't':
        cp = '\t';
        return false;
      case 'f':
        cp = '\f';
        return false;
      case 'v':
        cp = '\v';
        return false;
      case '0':
        cp = 0;
        return false;
      case 'x':
        cp = hex(2);
        return false;
      case 'c':
        if (at_end() || !std::isalpha(static_cast<unsigned char>(peek()))) fail("bad \\c escape");
        cp = static_cast<uint32_t>(p_[pos_++]) % 32;
        return false;
      case 'u':
        if (!at_end() && peek() == '{') {
          ++pos_;
          size_t start = pos_;
          while (!at_end() && peek() != '}') ++pos_;
          if (at_end() || pos_ == start || pos_ - start > 6) fail("bad \\u{...} escape");
          size_t end = pos_;
          pos_ = start;
          cp = hex(end - start);
          ++pos_;
        } else {
          cp = hex(4);
          // A surrogate pair written as two \u escapes.
          if (cp >= 0xD800 && cp <= 0xDBFF && pos_ + 6 <= p_.size() && p_[pos_] == '\\' &&
              p_[pos_ + 1] == 'u') {
            size_t save = pos_;
            pos_ += 2;
            uint32_t lo = hex(4);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              pos_ = save;
            }
          }
        }
        if (cp > kMaxCodePoint) fail("code point out of range");
        return false;
      case 'b':
        if (in_class) {
          cp = 0x08;
          return false;
        }
        --pos_;
        fail("word boundary \\b is not supported");
      case 'B':
        --pos_;
        fail("word boundary \\B is not supported");
      case 'k':
        --pos_;
        fail("named backreference \\k is not supported");
      case 'p':
      case 'P':
        --pos_;
        fail("Unicode property escapes \\p are not supported");
      default:
        if (c >= '1' && c <= '9') {
          --pos_;
          fail("backreferences are not supported");
        }
        --pos_;
        {
          int32_t v = decode_utf8(p_, pos_);
          if (v < 0) fail("invalid UTF-8");
          cp = static_cast<uint32_t>(v);
        }
        return false;
    }
  }

  Expr parse_class() {
    ++pos_;  // '['
    bool negated = false;
    if (!at_end() && peek() == '^') {
      negated = true;
      ++pos_;
    }
    std::vector<CodePointRange> ranges;
    // Reads one class atom: a code point (returns true) or a class escape (appends, false).
    auto atom = [&](uint32_t& cp) -> bool {
      if (peek() == '\\') {
        ++pos_;
        std::vector<CodePointRange> esc;
        if (parse_escape(true, cp, esc)) {
          ranges.insert(ranges.end(), esc.begin(), esc.end());
          return false;
        }
        return true;
      }
      int32_t v = decode_utf8(p_, pos_);
      if (v < 0) fail("invalid UTF-8");
      cp = static_cast<uint32_t>(v);
      return true;
    };
    while (true) {
      if (at_end()) fail("unterminated character class");
      if (peek() == ']') {
        ++pos_;
        break;
      }
      uint32_t lo = 0;
      if (!atom(lo)) continue;
      if (pos_ + 1 < p_.size() && peek() == '-' && p_[pos_ + 1] != ']') {
        ++pos_;
        uint32_t hi = 0;
        if (!atom(hi)) {
          // [a-\d]: the '-' is literal.
          ranges.push_back({lo, lo});
          ranges.push_back({'-', '-'});
          continue;
        }
        if (hi < lo) fail("class range out of order");
        ranges.push_back({lo, hi});
      } else {
        ranges.push_back({lo, lo});
      }
    }
    return Expr::char_class(negated ? complement_ranges(ranges) : ranges);
  }

  Expr parse_atom(int depth, bool at_start) {
    char c = peek();
    switch (c) {
      case '(': {
        if (depth + 1 > kMaxExprNesting) fail(nesting_error());
        ++pos_;
        if (!at_end() && peek() == '?') {
          ++pos_;
          if (at_end()) fail("bad group");
          char k = peek();
          if (k == ':') {
            ++pos_;
          } else if (k == '=' || k == '!') {
            fail("lookahead assertions are not supported");
          } else if (k == '<' && pos_ + 1 < p_.size() &&
                     (p_[pos_ + 1] == '=' || p_[pos_ + 1] == '!')) {
            fail("lookbehind assertions are not supported");
          } else if (k == '<') {
            while (!at_end() && peek() != '>') ++pos_;
            if (at_end()) fail("unterminated group name");
            ++pos_;
          } else {
            fail("unsupported group syntax (?" + std::string(1, k));
          }
        }
        Expr inner = parse_alternation(depth + 1, at_start);
        if (at_end() || peek() != ')') fail("missing ')'");
        ++pos_;
        return inner;
      }
      case '[':
        return parse_class();
      case '.':
        ++pos_;
        return Expr::char_class(dot_ranges());
      case '*':
      case '+':
      case '?':
        fail("nothing to repeat");
      case '{': {
        uint32_t a, b;
        if (parse_braces(a, b)) fail("nothing to repeat");
        ++pos_;
        return Expr::literal("{");
      }
      case '\\': {
        ++pos_;
        uint32_t cp = 0;
        std::vector<CodePointRange> ranges;
        if (parse_escape(false, cp, ranges)) return Expr::char_class(std::move(ranges));
        return Expr::char_class({{cp, cp}});
      }
      default: {
        int32_t v = decode_utf8(p_, pos_);
        if (v < 0) fail("invalid UTF-8");
        std::string s;
        append_utf8(s, static_cast<uint32_t>(v));
        return Expr::literal(std::move(s));
      }
    }
  }

  std::string_view p_;
  size_t pos_ = 0;
};

}  // namespace

Expr parse_regex(std::string_view pattern) { return RegexParser(pattern).parse(); }

}  // namespace agentrt::grammars
