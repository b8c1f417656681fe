#include "grammars/ebnf_parser.h"

#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "grammars/grammar.h"
#include "grammars/regex_parser.h"
#include "grammars/utf8.h"

namespace agentrt::grammars {
namespace {

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

class EbnfParser {
 public:
  explicit EbnfParser(std::string_view text) : t_(text) {}

  ParsedEbnf parse(std::string_view root_rule) {
    skip_space();
    if (at_end()) fail("empty grammar");
    while (!at_end()) {
      size_t name_pos = pos_;
      std::string_view name = parse_name();
      skip_space();
      if (t_.substr(pos_, 3) != "::=") {
        fail("expected '::=' after rule name '" + std::string(name) + "'");
      }
      pos_ += 3;
      int32_t id = rule_id(name, name_pos);
      if (defined_[id]) {
        pos_ = name_pos;
        fail("rule '" + std::string(name) + "' is defined twice");
      }
      defined_[id] = true;
      rules_[id].body = parse_alternation(false);
      skip_space();
      if (!at_end() && peek() == ')') fail("unmatched ')'");
    }
    for (size_t i = 0; i < rules_.size(); ++i) {
      if (!defined_[i]) {
        pos_ = first_use_[i];
        fail("undefined rule '" + rules_[i].name + "'");
      }
    }
    auto it = ids_.find(root_rule);
    if (it == ids_.end()) {
      throw GrammarError("grammar has no root rule '" + std::string(root_rule) + "'");
    }
    return ParsedEbnf{std::move(rules_), it->second};
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < t_.size(); ++i) {
      if (t_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    throw GrammarError("EBNF " + std::to_string(line) + ":" + std::to_string(col) + ": " + what);
  }
  bool at_end() const { return pos_ >= t_.size(); }
  char peek() const { return t_[pos_]; }

  void skip_space() {
    while (!at_end()) {
      char c = peek();
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++pos_;
      } else if (c == '#') {
        while (!at_end() && peek() != '\n') ++pos_;
      } else {
        break;
      }
    }
  }

  std::string_view parse_name() {
    size_t start = pos_;
    while (!at_end() && is_name_char(peek())) ++pos_;
    if (pos_ == start) fail("expected a rule name");
    return t_.substr(start, pos_ - start);
  }

  int32_t rule_id(std::string_view name, size_t use_pos) {
    // Looked up by view: a reference allocates nothing (names of schema grammars are longer
    // than the short-string buffer).
    if (auto it = ids_.find(name); it != ids_.end()) return it->second;
    const auto id = static_cast<int32_t>(rules_.size());
    ids_.emplace(std::string(name), id);
    rules_.push_back(GrammarRule{std::string(name), Expr::sequence({})});
    defined_.push_back(false);
    first_use_.push_back(use_pos);
    return id;
  }

  // True if a `name ::=` starts at pos_ (the end of the current rule).
  bool at_rule_start() const {
    size_t p = pos_;
    while (p < t_.size() && is_name_char(t_[p])) ++p;
    if (p == pos_) return false;
    while (p < t_.size() && (t_[p] == ' ' || t_[p] == '\t' || t_[p] == '\r' || t_[p] == '\n')) ++p;
    return t_.substr(p, 3) == "::=";
  }

  // One alternative or one element is returned as it is, without a vector around it (most
  // groups and alternatives of schema grammars: each vector was an allocation and a copy).
  Expr parse_alternation(bool nested) {
    Expr first = parse_sequence(nested);
    if (at_end() || peek() != '|') return first;
    std::vector<Expr> alts;
    alts.reserve(4);
    alts.push_back(std::move(first));
    while (!at_end() && peek() == '|') {
      ++pos_;
      alts.push_back(parse_sequence(nested));
    }
    return Expr::alternation(std::move(alts));
  }

  Expr parse_sequence(bool nested) {
    auto at_sequence_end = [&] {
      skip_space();
      return at_end() || peek() == '|' || peek() == ')' || (!nested && at_rule_start());
    };
    if (at_sequence_end()) return Expr::sequence({});
    Expr first = parse_quantifiers(parse_element(nested));
    if (at_sequence_end()) return first;
    std::vector<Expr> items;
    items.reserve(4);
    items.push_back(std::move(first));
    while (!at_sequence_end()) items.push_back(parse_quantifiers(parse_element(nested)));
    return Expr::sequence(std::move(items));
  }

  Expr parse_quantifiers(Expr e) {
    int stacked = depth_;
    while (true) {
      size_t save = pos_;
      skip_space();
      if (at_end()) break;
      char c = peek();
      if (c == '*') {
        ++pos_;
        e = nested_repeat(std::move(e), stacked, 0, Expr::kUnbounded);
      } else if (c == '+') {
        ++pos_;
        e = nested_repeat(std::move(e), stacked, 1, Expr::kUnbounded);
      } else if (c == '?') {
        ++pos_;
        e = nested_repeat(std::move(e), stacked, 0, 1);
      } else if (c == '{') {
        ++pos_;
        uint32_t min = 0, max = 0;
        skip_space();
        bool has_min = parse_number(min);
        skip_space();
        if (!at_end() && peek() == ',') {
          ++pos_;
          skip_space();
          if (!parse_number(max)) max = Expr::kUnbounded;
          skip_space();
        } else {
          if (!has_min) fail("expected a number in {m,n}");
          max = min;
        }
        if (at_end() || peek() != '}') fail("expected '}' to close {m,n}");
        ++pos_;
        if (max < min) fail("repetition {m,n} with n < m");
        e = nested_repeat(std::move(e), stacked, min, max);
      } else {
        pos_ = save;
        break;
      }
    }
    return e;
  }

  static std::string nesting_error() {
    return "groups and quantifiers nested more than " + std::to_string(kMaxExprNesting) + " deep";
  }
  Expr nested_repeat(Expr e, int& stacked, uint32_t min, uint32_t max) {
    if (++stacked > kMaxExprNesting) fail(nesting_error());
    return Expr::repeat(std::move(e), min, max);
  }

  bool parse_number(uint32_t& out) {
    size_t start = pos_;
    uint64_t v = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + (peek() - '0');
      if (v > 10000000) fail("repetition bound too large");
      ++pos_;
    }
    out = static_cast<uint32_t>(v);
    return pos_ > start;
  }

  uint32_t parse_hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (at_end()) fail("truncated escape");
      char c = peek();
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) fail("bad hex digit in escape");
      v = v * 16 + d;
      ++pos_;
    }
    return v;
  }

  // One code point of a literal or class, handling escapes.
  uint32_t parse_char() {
    if (peek() != '\\') {
      int32_t v = decode_utf8(t_, pos_);
      if (v < 0) fail("invalid UTF-8");
      return static_cast<uint32_t>(v);
    }
    ++pos_;
    if (at_end()) fail("trailing backslash");
    char c = peek();
    ++pos_;
    uint32_t cp = 0;
    switch (c) {
      case 'n':
        return '\n';
      case 'r':
        return '\r';
      case 't':
        return '\t';
      case 'f':
        return '\f';
      case 'v':
        return '\v';
      case '0':
        return 0;
      case 'x':
        cp = parse_hex(2);
        break;
      case 'u':
        cp = parse_hex(4);
        break;
      case 'U':
        cp = parse_hex(8);
        break;
      default:
        if (std::isalnum(static_cast<unsigned char>(c))) {
          --pos_;
          fail(std::string("unknown escape '\\") + c + "'");
        }
        return static_cast<unsigned char>(c);  // \" \\ \[ \] \- \/ ...
    }
    if (cp > kMaxCodePoint) fail("code point out of range");
    return cp;
  }

  Expr parse_element(bool nested) {
    char c = peek();
    if (c == '"') {
      size_t start = pos_++;
      std::string bytes;
      while (true) {
        if (at_end() || peek() == '\n') {
          pos_ = start;
          fail("unterminated string literal");
        }
        if (peek() == '"') break;
        uint32_t cp = parse_char();
        if (cp >= 0xD800 && cp <= 0xDFFF) fail("surrogate code point in literal");
        append_utf8(bytes, cp);
      }
      ++pos_;
      return Expr::literal(std::move(bytes));
    }
    if (c == '[') {
      ++pos_;
      bool negated = false;
      if (!at_end() && peek() == '^') {
        negated = true;
        ++pos_;
      }
      std::vector<CodePointRange> ranges;
      while (true) {
        if (at_end()) fail("unterminated character class");
        if (peek() == ']') break;
        uint32_t lo = parse_char();
        uint32_t hi = lo;
        if (pos_ + 1 < t_.size() && peek() == '-' && t_[pos_ + 1] != ']') {
          ++pos_;
          hi = parse_char();
          if (hi < lo) fail("character class range out of order");
        }
        ranges.push_back({lo, hi});
      }
      ++pos_;
      return Expr::char_class(negated ? complement_ranges(ranges) : std::move(ranges));
    }
    if (c == '.') {
      ++pos_;
      return Expr::char_class({{0, kMaxCodePoint}});
    }
    if (c == '(') {
      if (++depth_ > kMaxExprNesting) fail(nesting_error());
      ++pos_;
      Expr inner = parse_alternation(true);
      skip_space();
      if (at_end() || peek() != ')') fail("expected ')'");
      ++pos_;
      --depth_;
      return inner;
    }
    if (c == '/') {
      size_t start = ++pos_;
      bool in_class = false;
      while (true) {
        if (at_end() || peek() == '\n') fail("unterminated /regex/");
        char r = peek();
        if (r == '\\') {
          pos_ += 2;
          continue;
        }
        if (r == '[') in_class = true;
        if (r == ']') in_class = false;
        if (r == '/' && !in_class) break;
        ++pos_;
      }
      // Inside the EBNF a slash is written \/; the regex parser sees it as an identity escape.
      std::string_view pattern = t_.substr(start, pos_ - start);
      size_t regex_pos = start;
      ++pos_;
      try {
        return parse_regex(pattern);
      } catch (const GrammarError& e) {
        pos_ = regex_pos;
        fail(e.what());
      }
    }
    if (is_name_char(c)) {
      size_t name_pos = pos_;
      std::string_view name = parse_name();
      return Expr::rule_ref(rule_id(name, name_pos));
    }
    (void)nested;
    fail(std::string("unexpected character '") + c + "'");
  }

  std::string_view t_;
  size_t pos_ = 0;
  int depth_ = 0;  // open groups
  std::vector<GrammarRule> rules_;
  std::vector<bool> defined_;
  std::vector<size_t> first_use_;
  struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int32_t, NameHash, std::equal_to<>> ids_;
};

}  // namespace

ParsedEbnf parse_ebnf(std::string_view text, std::string_view root_rule) {
  return EbnfParser(text).parse(root_rule);
}

}  // namespace agentrt::grammars
