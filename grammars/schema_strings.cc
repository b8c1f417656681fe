#include "grammars/schema_strings.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>

#include "grammars/utf8.h"

namespace agentrt::grammars {

CodepointSet CodepointSet::range(uint32_t lo, uint32_t hi) {
  CodepointSet s;
  s.add(lo, hi);
  return s;
}

void CodepointSet::add(uint32_t lo, uint32_t hi) {
  if (lo > hi) return;
  ranges_.emplace_back(lo, std::min(hi, kMaxCodepoint));
  normalise();
}

void CodepointSet::add(const CodepointSet& other) {
  ranges_.insert(ranges_.end(), other.ranges_.begin(), other.ranges_.end());
  normalise();
}

void CodepointSet::normalise() {
  std::sort(ranges_.begin(), ranges_.end());
  std::vector<std::pair<uint32_t, uint32_t>> merged;
  for (const auto& r : ranges_) {
    if (!merged.empty() && r.first <= merged.back().second + 1) {
      merged.back().second = std::max(merged.back().second, r.second);
    } else {
      merged.push_back(r);
    }
  }
  ranges_ = std::move(merged);
}

CodepointSet CodepointSet::complement() const {
  CodepointSet out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : ranges_) {
    if (lo > next) out.ranges_.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= kMaxCodepoint) out.ranges_.emplace_back(next, kMaxCodepoint);
  return out;
}

CodepointSet CodepointSet::minus(const CodepointSet& other) const {
  // A \ B = complement(complement(A) ∪ B)
  CodepointSet c = complement();
  c.add(other);
  return c.complement();
}

bool CodepointSet::contains(uint32_t cp) const {
  for (const auto& [lo, hi] : ranges_) {
    if (cp >= lo && cp <= hi) return true;
  }
  return false;
}

std::vector<uint32_t> utf8_codepoints(std::string_view text) {
  std::vector<uint32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<unsigned char>(text[i]);
    int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > text.size()) {
      throw std::invalid_argument("malformed UTF-8 at byte offset " + std::to_string(i));
    }
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (int k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(text[i + k]);
      if ((c >> 6) != 2) {
        throw std::invalid_argument("malformed UTF-8 at byte offset " + std::to_string(i + k));
      }
      cp = (cp << 6) | (c & 0x3F);
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

namespace {

std::string hex2(unsigned v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return {kDigits[(v >> 4) & 0xF], kDigits[v & 0xF]};
}

// One code point written inside an EBNF char class.
std::string class_char(uint32_t cp) {
  if (cp == ']' || cp == '[' || cp == '\\' || cp == '^' || cp == '-') {
    return std::string("\\") + static_cast<char>(cp);
  }
  if (cp < 0x20 || cp == 0x7F) return "\\x" + hex2(cp);
  if (cp < 0x80) return std::string(1, static_cast<char>(cp));
  if (cp >= 0xD800 && cp <= 0xDFFF) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04X", cp);
    return buf;
  }
  std::string out;
  append_utf8(out, cp);
  return out;
}

// The canonical escape of a control character (< 0x20), json.dumps style.
std::string control_escape(uint32_t cp) {
  switch (cp) {
    case 0x08:
      return "\\b";
    case 0x09:
      return "\\t";
    case 0x0A:
      return "\\n";
    case 0x0C:
      return "\\f";
    case 0x0D:
      return "\\r";
    default:
      return "\\u00" + hex2(cp);
  }
}

}  // namespace

std::string ebnf_literal(std::string_view bytes) {
  std::string out = "\"";
  for (char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      out += "\\x" + hex2(c);
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string ebnf_char_class(const CodepointSet& set) {
  if (set.empty()) throw std::logic_error("ebnf_char_class: empty code point set");
  std::string out = "[";
  for (const auto& [lo, hi] : set.ranges()) {
    out += class_char(lo);
    if (hi != lo) {
      if (hi != lo + 1) out += "-";
      out += class_char(hi);
    }
  }
  return out + "]";
}

std::string json_string_unit(const CodepointSet& set, StringEncoding encoding) {
  if (encoding == StringEncoding::raw) {
    CodepointSet raw =
        set.minus(CodepointSet::single('<')).minus(CodepointSet::range(0xD800, 0xDFFF));
    return raw.empty() ? "" : ebnf_char_class(raw);
  }
  static const CodepointSet kSpecial = [] {
    CodepointSet s = CodepointSet::range(0, 0x1F);
    s.add('"', '"');
    s.add('\\', '\\');
    s.add(0xD800, 0xDFFF);  // lone surrogates cannot appear raw in UTF-8 text
    return s;
  }();
  std::vector<std::string> alts;
  CodepointSet raw = set.minus(kSpecial);
  if (!raw.empty()) alts.push_back(ebnf_char_class(raw));
  if (set.contains('"')) alts.push_back(ebnf_literal("\\\""));
  if (set.contains('\\')) alts.push_back(ebnf_literal("\\\\"));
  // Control characters: group the \u00xx ones into one class-based expression when many.
  uint32_t controls = 0;  // bit cp: control character cp is in the set
  for (const auto& [lo, hi] : set.ranges()) {
    for (uint32_t cp = lo; cp <= hi && cp < 0x20; ++cp) controls |= 1u << cp;
  }
  // \b \t \n \f \r, as control_escape writes them; the other controls as \u00xx.
  constexpr uint32_t kShort =
      (1u << 0x08) | (1u << 0x09) | (1u << 0x0A) | (1u << 0x0C) | (1u << 0x0D);
  if (controls & kShort) {
    CodepointSet letters;
    for (uint32_t cp = 0; cp < 0x20; ++cp) {
      if ((kShort & controls) >> cp & 1u) letters.add(control_escape(cp)[1], control_escape(cp)[1]);
    }
    alts.push_back("\"\\\\\" " + ebnf_char_class(letters));
  }
  if (const uint32_t hex = controls & ~kShort) {
    CodepointSet lo_digit, hi_digit;  // \u000X and \u001X
    for (uint32_t cp = 0; cp < 0x20; ++cp) {
      if (!(hex >> cp & 1u)) continue;
      const uint32_t d = cp & 0xF;
      const uint32_t ch = d < 10 ? '0' + d : 'a' + d - 10;
      (cp < 0x10 ? lo_digit : hi_digit).add(ch, ch);
    }
    if (!lo_digit.empty()) alts.push_back("\"\\\\u000\" " + ebnf_char_class(lo_digit));
    if (!hi_digit.empty()) alts.push_back("\"\\\\u001\" " + ebnf_char_class(hi_digit));
  }
  if (alts.empty()) return "";
  if (alts.size() == 1) return alts[0];
  std::string out = "(";
  for (size_t i = 0; i < alts.size(); ++i) out += (i ? " | " : "") + alts[i];
  return out + ")";
}

std::string json_escape_content(std::string_view text) {
  std::string out;
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"') {
      out += "\\\"";
    } else if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20) {
      out += control_escape(c);
    } else {
      out += ch;
    }
  }
  return out;
}

namespace {

struct TrieNode {
  bool terminal = false;
  std::map<uint32_t, std::unique_ptr<TrieNode>> children;
};

// Characters written as themselves in one byte: what a key's characters almost always are.
const CodepointSet& plain_ascii() {
  static const CodepointSet kPlain = CodepointSet::range(0x20, 0x7F)
                                         .minus(CodepointSet::single('"'))
                                         .minus(CodepointSet::single('\\'));
  return kPlain;
}

// `closing` empty: the content of the string (the end is where the caller puts the quote);
// else the string's tail up to and including `closing`, and `any_rest` must include it too.
// `other_rest` (may be empty): see json_string_tail_excluding. Appends to `out`: returning
// each subtree's text copied it once per level above it (keys of 20 and more characters).
// Shared exit rules (json_string_tail_excluding): the function making them, and the ones met
// in this trie by (next character, or 128 at a leaf) * 2 + whether a key ends there.
struct TrieExits {
  const SharedRule* shared = nullptr;
  std::vector<std::string> names = std::vector<std::string>(129 * 2);
};

void trie_excluding(const TrieNode& node, const std::string& any_rest, const std::string& closing,
                    const std::string& other_rest, TrieExits& shared_exits, std::string& out) {
  // Units of single plain ASCII characters, written once rather than at every trie node.
  static const std::vector<std::string> kAsciiUnits = [] {
    std::vector<std::string> units(128);
    for (uint32_t cp = 0; cp < 128; ++cp) units[cp] = json_string_unit(CodepointSet::single(cp));
    return units;
  }();
  out += '(';
  bool first = true;
  auto next_alt = [&] {
    if (!first) out += " | ";
    first = false;
  };
  CodepointSet used;
  bool all_plain = true;  // every child is a plain ASCII character
  for (const auto& [cp, child] : node.children) {
    used.add(cp, cp);
    all_plain = all_plain && plain_ascii().contains(cp);
    next_alt();
    out += cp < 128 ? kAsciiUnits[cp] : json_string_unit(CodepointSet::single(cp));
    out += ' ';
    trie_excluding(*child, any_rest, closing, other_rest, shared_exits, out);
  }
  // The ways of leaving the trie here, written in place or as a shared rule.
  const size_t exits = out.size();
  const bool was_first = first;
  first = true;
  std::string* shared = nullptr;
  if (shared_exits.shared && all_plain && node.children.size() <= 1 && !other_rest.empty()) {
    const uint32_t next = node.children.empty() ? 128 : node.children.begin()->first;
    shared = &shared_exits.names[next * 2 + (node.terminal ? 1 : 0)];
  }
  if (shared && !shared->empty()) {
    next_alt();
    out += *shared;
  } else if (!other_rest.empty() && all_plain) {
    // The other plain characters; for the nodes with one child (most) from a table.
    static const std::vector<std::string> kPlainExcept = [] {
      std::vector<std::string> classes(128);
      for (uint32_t cp = 0; cp < 128; ++cp) {
        if (plain_ascii().contains(cp)) {
          classes[cp] = ebnf_char_class(plain_ascii().minus(CodepointSet::single(cp)));
        }
      }
      return classes;
    }();
    const CodepointSet ascii =
        node.children.size() == 1 ? CodepointSet() : plain_ascii().minus(used);
    if (node.children.size() == 1 || !ascii.empty()) {
      next_alt();
      out += node.children.size() == 1 ? kPlainExcept[node.children.begin()->first]
                                       : ebnf_char_class(ascii);
      out += ' ';
      out += any_rest;
    }
    next_alt();
    out += other_rest;
  } else if (std::string other = json_string_unit(CodepointSet::all().minus(used));
             !other.empty()) {
    next_alt();
    out += other;
    out += ' ';
    out += any_rest;
  }
  // Ending here is allowed unless the string so far is one of the excluded.
  if (!closing.empty() && !node.terminal && !(shared && !shared->empty())) {
    next_alt();
    out += closing;
  }
  if (shared && shared->empty()) {
    // Depends only on the one next character and whether the node ends a key: the same at
    // most nodes of every key trie of a grammar.
    *shared = (*shared_exits.shared)(out.substr(exits));
    out.resize(exits);
    out += *shared;
  }
  if (!was_first && !first) out.insert(exits, " | ");
  out += ')';
  if (closing.empty() && !node.terminal) out += '?';
}

TrieNode excluded_trie(const std::vector<std::string>& excluded) {
  TrieNode root;
  for (const auto& s : excluded) {
    TrieNode* n = &root;
    for (uint32_t cp : utf8_codepoints(s)) {
      auto& child = n->children[cp];
      if (!child) child = std::make_unique<TrieNode>();
      n = child.get();
    }
    n->terminal = true;
  }
  return root;
}

}  // namespace

std::string json_string_content_excluding(const std::vector<std::string>& excluded,
                                          const std::string& any_rest_rule) {
  const std::string any_rest =
      any_rest_rule.empty() ? json_string_unit(CodepointSet::all()) + "*" : any_rest_rule;
  if (excluded.empty()) return any_rest;
  std::string out;
  TrieExits no_sharing;
  trie_excluding(excluded_trie(excluded), any_rest, "", "", no_sharing, out);
  return out;
}

std::string json_string_tail_excluding(const std::vector<std::string>& excluded,
                                       const std::string& tail_rule,
                                       const std::string& other_tail_rule,
                                       const SharedRule& shared_rule) {
  if (excluded.empty()) return tail_rule;
  std::string out;
  TrieExits exits{shared_rule ? &shared_rule : nullptr};
  trie_excluding(excluded_trie(excluded), tail_rule, "\"\\\"\"", other_tail_rule, exits, out);
  return out;
}

std::string json_string_other_tail() {
  return json_string_unit(CodepointSet::all().minus(plain_ascii())) + " (" +
         json_string_unit(CodepointSet::all()) + ")* \"\\\"\"";
}

}  // namespace agentrt::grammars
