#include "grammars/schema_pattern.h"

#include <algorithm>
#include <stdexcept>

namespace agentrt::grammars {
namespace {

CodepointSet digit_set() { return CodepointSet::range('0', '9'); }

CodepointSet word_set() {
  CodepointSet s = CodepointSet::range('a', 'z');
  s.add('A', 'Z');
  s.add('0', '9');
  s.add('_', '_');
  return s;
}

// ECMAScript WhiteSpace and LineTerminator.
CodepointSet space_set() {
  CodepointSet s = CodepointSet::range('\t', '\r');
  s.add(' ', ' ');
  s.add(0xA0, 0xA0);
  s.add(0x1680, 0x1680);
  s.add(0x2000, 0x200A);
  s.add(0x2028, 0x2029);
  s.add(0x202F, 0x202F);
  s.add(0x205F, 0x205F);
  s.add(0x3000, 0x3000);
  s.add(0xFEFF, 0xFEFF);
  return s;
}

CodepointSet dot_set() {
  CodepointSet s = CodepointSet::all();
  CodepointSet line;
  line.add('\n', '\n');
  line.add('\r', '\r');
  line.add(0x2028, 0x2029);
  return s.minus(line);
}

RegexNode chars_node(CodepointSet set) {
  RegexNode n;
  n.kind = RegexNode::Kind::chars;
  n.chars = std::move(set);
  return n;
}

RegexNode repeat_node(RegexNode child, int min, int max) {
  RegexNode n;
  n.kind = RegexNode::Kind::repeat;
  n.min = min;
  n.max = max;
  n.children.push_back(std::move(child));
  return n;
}

class PatternParser {
 public:
  explicit PatternParser(std::string_view pattern) : pattern_(pattern) {
    try {
      cps_ = utf8_codepoints(pattern);
    } catch (const std::invalid_argument& e) {
      fail(std::string(e.what()));
    }
  }

  ParsedPattern parse() {
    ParsedPattern out;
    out.anchored_start = true;
    out.anchored_end = true;
    RegexNode alt;
    alt.kind = RegexNode::Kind::alternation;
    while (true) {
      bool start = false, end = false;
      if (peek('^')) {
        ++pos_;
        start = true;
      }
      RegexNode branch = parse_concat(/*top_level=*/true);
      if (peek('$')) {
        ++pos_;
        end = true;
      }
      // Search semantics: an unanchored side matches any surrounding text.
      RegexNode wrapped;
      wrapped.kind = RegexNode::Kind::concat;
      if (!start) wrapped.children.push_back(repeat_node(chars_node(CodepointSet::all()), 0, -1));
      wrapped.children.push_back(std::move(branch));
      if (!end) wrapped.children.push_back(repeat_node(chars_node(CodepointSet::all()), 0, -1));
      out.anchored_start &= start;
      out.anchored_end &= end;
      alt.children.push_back(std::move(wrapped));
      if (pos_ >= cps_.size()) break;
      if (!peek('|')) fail("unexpected character");
      ++pos_;
    }
    out.root = alt.children.size() == 1 ? std::move(alt.children[0]) : std::move(alt);
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument("pattern /" + std::string(pattern_) + "/: " + what +
                                " at character " + std::to_string(pos_));
  }

  bool peek(uint32_t c) const { return pos_ < cps_.size() && cps_[pos_] == c; }

  RegexNode parse_alternation() {
    RegexNode alt;
    alt.kind = RegexNode::Kind::alternation;
    alt.children.push_back(parse_concat(false));
    while (peek('|')) {
      ++pos_;
      alt.children.push_back(parse_concat(false));
    }
    if (alt.children.size() == 1) return std::move(alt.children[0]);
    return alt;
  }

  RegexNode parse_concat(bool top_level) {
    RegexNode seq;
    seq.kind = RegexNode::Kind::concat;
    while (pos_ < cps_.size() && !peek('|') && !peek(')')) {
      if (peek('$')) {
        if (top_level && (pos_ + 1 == cps_.size() || cps_[pos_ + 1] == '|')) break;
        fail("anchor '$' inside the pattern is not supported");
      }
      if (peek('^')) fail("anchor '^' inside the pattern is not supported");
      RegexNode atom = parse_atom();
      atom = parse_quantifiers(std::move(atom));
      seq.children.push_back(std::move(atom));
    }
    if (top_level && peek(')')) fail("unbalanced ')'");
    if (seq.children.size() == 1) return std::move(seq.children[0]);
    return seq;
  }

  // Reads a decimal number at pos_; returns -1 when there is none.
  long read_int() {
    long v = -1;
    while (pos_ < cps_.size() && cps_[pos_] >= '0' && cps_[pos_] <= '9') {
      v = (v < 0 ? 0 : v) * 10 + (cps_[pos_] - '0');
      if (v > 100000) fail("repetition count too large");
      ++pos_;
    }
    return v;
  }

  RegexNode parse_quantifiers(RegexNode atom) {
    while (pos_ < cps_.size()) {
      int min, max;
      const uint32_t c = cps_[pos_];
      if (c == '*') {
        min = 0, max = -1, ++pos_;
      } else if (c == '+') {
        min = 1, max = -1, ++pos_;
      } else if (c == '?') {
        min = 0, max = 1, ++pos_;
      } else if (c == '{') {
        const size_t save = pos_++;
        long lo = read_int();
        long hi = lo;
        if (lo >= 0 && peek(',')) {
          ++pos_;
          hi = read_int();
        }
        if (lo < 0 || !peek('}')) {
          pos_ = save;  // Annex B: a '{' that is no quantifier is a literal
          return atom;
        }
        ++pos_;
        if (hi >= 0 && hi < lo) fail("repetition {m,n} with n < m");
        min = static_cast<int>(lo), max = static_cast<int>(hi);
      } else {
        return atom;
      }
      if (peek('?')) ++pos_;  // lazy quantifiers match the same language
      atom = repeat_node(std::move(atom), min, max);
    }
    return atom;
  }

  RegexNode parse_atom() {
    const uint32_t c = cps_[pos_];
    if (c == '(') {
      ++pos_;
      if (peek('?')) {
        ++pos_;
        if (peek(':')) {
          ++pos_;
        } else if (peek('<') && pos_ + 1 < cps_.size() && cps_[pos_ + 1] != '=' &&
                   cps_[pos_ + 1] != '!') {
          while (pos_ < cps_.size() && !peek('>')) ++pos_;  // named group
          if (!peek('>')) fail("unterminated group name");
          ++pos_;
        } else {
          fail("lookaround assertions are not supported");
        }
      }
      RegexNode inner = parse_alternation();
      if (!peek(')')) fail("missing ')'");
      ++pos_;
      return inner;
    }
    if (c == '[') return chars_node(parse_class());
    if (c == '.') {
      ++pos_;
      return chars_node(dot_set());
    }
    if (c == '*' || c == '+' || c == '?') fail("quantifier without an atom");
    if (c == '\\') {
      ++pos_;
      return chars_node(parse_escape(/*in_class=*/false));
    }
    ++pos_;
    return chars_node(CodepointSet::single(c));
  }

  uint32_t read_hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (pos_ >= cps_.size()) fail("truncated hex escape");
      const uint32_t h = cps_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') {
        v |= h - '0';
      } else if (h >= 'a' && h <= 'f') {
        v |= h - 'a' + 10;
      } else if (h >= 'A' && h <= 'F') {
        v |= h - 'A' + 10;
      } else {
        fail("bad hex digit");
      }
    }
    return v;
  }

  // After a backslash.
  CodepointSet parse_escape(bool in_class) {
    if (pos_ >= cps_.size()) fail("trailing backslash");
    const uint32_t c = cps_[pos_++];
    switch (c) {
      case 'd': return digit_set();
      case 'D': return digit_set().complement();
      case 'w': return word_set();
      case 'W': return word_set().complement();
      case 's': return space_set();
      case 'S': return space_set().complement();
      case 'n': return CodepointSet::single('\n');
      case 'r': return CodepointSet::single('\r');
      case 't': return CodepointSet::single('\t');
      case 'f': return CodepointSet::single('\f');
      case 'v': return CodepointSet::single('\v');
      case '0': return CodepointSet::single(0);
      case 'x': return CodepointSet::single(read_hex(2));
      case 'u': {
        if (peek('{')) {
          ++pos_;
          uint32_t v = 0;
          while (pos_ < cps_.size() && !peek('}')) v = (v << 4) | read_hex(1);
          if (!peek('}')) fail("unterminated \\u{...}");
          ++pos_;
          return CodepointSet::single(v);
        }
        uint32_t v = read_hex(4);
        // A surrogate pair written as two \u escapes denotes one code point.
        if (v >= 0xD800 && v <= 0xDBFF && pos_ + 5 < cps_.size() && cps_[pos_] == '\\' &&
            cps_[pos_ + 1] == 'u') {
          const size_t save = pos_;
          pos_ += 2;
          const uint32_t lo = read_hex(4);
          if (lo >= 0xDC00 && lo <= 0xDFFF) return CodepointSet::single(0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00));
          pos_ = save;
        }
        return CodepointSet::single(v);
      }
      case 'c': {
        if (pos_ >= cps_.size()) fail("truncated \\c escape");
        return CodepointSet::single(cps_[pos_++] % 32);
      }
      case 'b':
        if (in_class) return CodepointSet::single('\b');
        fail("word boundary \\b is not supported");
      case 'B': fail("word boundary \\B is not supported");
      case 'p':
      case 'P': fail("Unicode property escapes are not supported");
      case 'k': fail("named backreferences are not supported");
      default:
        if (c >= '1' && c <= '9') fail("backreferences are not supported");
        return CodepointSet::single(c);  // identity escape: \. \/ \- \[ ...
    }
  }

  CodepointSet parse_class() {
    ++pos_;  // '['
    bool negated = false;
    if (peek('^')) {
      negated = true;
      ++pos_;
    }
    CodepointSet set;
    while (true) {
      if (pos_ >= cps_.size()) fail("unterminated character class");
      if (peek(']')) break;
      auto read_one = [&](bool& is_single) -> CodepointSet {
        is_single = true;
        if (peek('\\')) {
          ++pos_;
          CodepointSet s = parse_escape(true);
          is_single = s.ranges().size() == 1 && s.ranges()[0].first == s.ranges()[0].second;
          return s;
        }
        return CodepointSet::single(cps_[pos_++]);
      };
      bool lo_single;
      CodepointSet lo = read_one(lo_single);
      if (lo_single && peek('-') && pos_ + 1 < cps_.size() && cps_[pos_ + 1] != ']') {
        ++pos_;
        bool hi_single;
        CodepointSet hi = read_one(hi_single);
        if (!hi_single) fail("class range ending in a class escape");
        const uint32_t a = lo.ranges()[0].first, b = hi.ranges()[0].first;
        if (b < a) fail("class range out of order");
        set.add(a, b);
      } else {
        set.add(lo);
      }
    }
    ++pos_;  // ']'
    return negated ? set.complement() : set;
  }

  std::string_view pattern_;
  std::vector<uint32_t> cps_;
  size_t pos_ = 0;
};

std::string group(const std::string& e) { return "(" + e + ")"; }

}  // namespace

ParsedPattern parse_pattern(std::string_view pattern) { return PatternParser(pattern).parse(); }

std::string regex_to_json_content(const RegexNode& node, StringEncoding encoding) {
  switch (node.kind) {
    case RegexNode::Kind::empty: return "";
    case RegexNode::Kind::chars: {
      std::string u = json_string_unit(node.chars, encoding);
      if (u.empty()) throw std::invalid_argument("pattern contains an empty character class");
      return u;
    }
    case RegexNode::Kind::concat: {
      std::string out;
      for (const auto& c : node.children) {
        std::string e = regex_to_json_content(c, encoding);
        if (e.empty()) continue;
        out += (out.empty() ? "" : " ") + e;
      }
      return node.children.size() > 1 && !out.empty() ? group(out) : out;
    }
    case RegexNode::Kind::alternation: {
      std::string out;
      bool has_empty = false;
      for (const auto& c : node.children) {
        std::string e = regex_to_json_content(c, encoding);
        if (e.empty()) {
          has_empty = true;
          continue;
        }
        out += (out.empty() ? "" : " | ") + e;
      }
      if (out.empty()) return "";
      return group(out) + (has_empty ? "?" : "");
    }
    case RegexNode::Kind::repeat: {
      std::string e = regex_to_json_content(node.children[0], encoding);
      if (e.empty() || node.max == 0) return "";
      e = group(e);
      if (node.min == 0 && node.max == -1) return e + "*";
      if (node.min == 1 && node.max == -1) return e + "+";
      if (node.min == 0 && node.max == 1) return e + "?";
      if (node.max == -1) return e + "{" + std::to_string(node.min) + ",}";
      if (node.min == node.max) return e + "{" + std::to_string(node.min) + "}";
      return e + "{" + std::to_string(node.min) + "," + std::to_string(node.max) + "}";
    }
  }
  return "";
}

std::string pattern_to_json_content(std::string_view pattern, StringEncoding encoding) {
  return regex_to_json_content(parse_pattern(pattern).root, encoding);
}

namespace {

// The end positions reachable by matching `node` from any position in `starts`.
std::vector<bool> match_ends(const RegexNode& node, const std::vector<uint32_t>& text,
                             const std::vector<bool>& starts) {
  const size_t n = text.size();
  switch (node.kind) {
    case RegexNode::Kind::empty: return starts;
    case RegexNode::Kind::chars: {
      std::vector<bool> out(n + 1, false);
      for (size_t i = 0; i < n; ++i) {
        if (starts[i] && node.chars.contains(text[i])) out[i + 1] = true;
      }
      return out;
    }
    case RegexNode::Kind::concat: {
      std::vector<bool> cur = starts;
      for (const auto& c : node.children) cur = match_ends(c, text, cur);
      return cur;
    }
    case RegexNode::Kind::alternation: {
      std::vector<bool> out(n + 1, false);
      for (const auto& c : node.children) {
        std::vector<bool> e = match_ends(c, text, starts);
        for (size_t i = 0; i <= n; ++i) out[i] = out[i] || e[i];
      }
      return out;
    }
    case RegexNode::Kind::repeat: {
      std::vector<bool> out(n + 1, false);
      std::vector<bool> cur = starts;
      for (int k = 0;; ++k) {
        if (k >= node.min) {
          for (size_t i = 0; i <= n; ++i) out[i] = out[i] || cur[i];
        }
        if (node.max >= 0 && k >= node.max) break;
        std::vector<bool> next = match_ends(node.children[0], text, cur);
        if (k >= node.min) {
          // Past the minimum only new positions matter; stop at a fixpoint.
          bool grew = false;
          for (size_t i = 0; i <= n; ++i) {
            if (next[i] && !out[i]) grew = true;
          }
          if (!grew) break;
        } else if (std::none_of(next.begin(), next.end(), [](bool b) { return b; })) {
          break;
        }
        cur = std::move(next);
      }
      return out;
    }
  }
  return starts;
}

}  // namespace

bool pattern_matches(const ParsedPattern& pattern, std::string_view text) {
  std::vector<uint32_t> cps = utf8_codepoints(text);
  std::vector<bool> starts(cps.size() + 1, false);
  starts[0] = true;
  return match_ends(pattern.root, cps, starts)[cps.size()];
}

std::optional<ClassRepeat> pattern_as_class_repeat(std::string_view pattern) {
  ParsedPattern p = parse_pattern(pattern);
  if (!p.anchored_start || !p.anchored_end) return std::nullopt;
  const RegexNode* n = &p.root;
  // Unwrap the single-element concatenations the parser builds around anchored branches.
  while (n->kind == RegexNode::Kind::concat && n->children.size() == 1) n = &n->children[0];
  if (n->kind == RegexNode::Kind::chars) return ClassRepeat{n->chars, 1, 1};
  if (n->kind == RegexNode::Kind::repeat && n->children[0].kind == RegexNode::Kind::chars) {
    return ClassRepeat{n->children[0].chars, n->min, n->max};
  }
  return std::nullopt;
}

}  // namespace agentrt::grammars
