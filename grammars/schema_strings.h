// Building blocks for JSON-string grammars: sets of code points, their canonical JSON encoding
// as EBNF, EBNF literals, and "any string except these" exclusion grammars.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace agentrt::grammars {

inline constexpr uint32_t kMaxCodepoint = 0x10FFFF;

// A set of Unicode code points as sorted, disjoint, non-adjacent closed ranges.
class CodepointSet {
 public:
  CodepointSet() = default;
  static CodepointSet single(uint32_t cp) { return range(cp, cp); }
  static CodepointSet range(uint32_t lo, uint32_t hi);
  static CodepointSet all() { return range(0, kMaxCodepoint); }

  void add(uint32_t lo, uint32_t hi);
  void add(const CodepointSet& other);
  CodepointSet complement() const;
  CodepointSet minus(const CodepointSet& other) const;
  bool contains(uint32_t cp) const;
  bool empty() const { return ranges_.empty(); }
  const std::vector<std::pair<uint32_t, uint32_t>>& ranges() const { return ranges_; }

 private:
  void normalise();
  std::vector<std::pair<uint32_t, uint32_t>> ranges_;
};

// EBNF literal "..." for raw bytes (escapes ", \, control bytes; keeps UTF-8 as is).
std::string ebnf_literal(std::string_view bytes);

// EBNF char class [...] over code points; the set must be non-empty.
std::string ebnf_char_class(const CodepointSet& set);

// How string characters are written: JSON-escaped inside quotes, or raw (DSML parameter
// values, where '<' is excluded so that a closing tag can never occur inside a value).
enum class StringEncoding { json, raw };

// EBNF expression matching the canonical JSON-string encoding (inside the quotes) of exactly
// one code point of `set`: raw UTF-8 for ordinary characters, \" and \\ for the quote and the
// backslash, \b \t \n \f \r or \u00xx for control characters (json.dumps / nlohmann style).
// Returns an empty string when the set is empty.
std::string json_string_unit(const CodepointSet& set,
                             StringEncoding encoding = StringEncoding::json);

// The JSON-string content (without the quotes) of `text`, canonically escaped.
std::string json_escape_content(std::string_view text);

// Decodes UTF-8 into code points; throws std::invalid_argument on malformed input.
std::vector<uint32_t> utf8_codepoints(std::string_view text);

// EBNF for the content (without quotes) of any canonical JSON string whose decoded value is
// not one of `excluded`; every string is allowed when `excluded` is empty. `any_rest` (when not
// empty) names a rule for any canonical content, written where the string has left every
// excluded one: without it that expression is repeated at every such point.
std::string json_string_content_excluding(const std::vector<std::string>& excluded,
                                          const std::string& any_rest = "");
// The same as the tail of a string: content then the closing quote, with `tail_rule` naming a
// rule for any canonical content and the closing quote. Where a string has left the excluded
// ones the grammar is in that one rule, whose loop state cannot return: the token walk there
// stays on its fast path (position_masks.cc), and its positions are shared between grammars.
// `other_tail_rule` (when not empty) names a rule for json_string_other_tail(): where the
// excluded strings go on with plain ASCII characters only, the grammar then writes the plain
// characters that leave them and that one rule, instead of all of Unicode and the escapes at
// every point (which was most of the text and automaton of schemas with many objects).
// With `shared_rule` (and `other_tail_rule`), the ways of leaving the excluded strings at a
// point where at most one plain ASCII character continues them (most points) are an EBNF body
// handed to shared_rule, which returns the rule to write instead: the body depends only on that
// character and whether an excluded string ends there, so a grammar needs a few dozen such
// rules for all its key tries instead of the alternatives at every point.
using SharedRule = std::function<std::string(const std::string& body)>;
std::string json_string_tail_excluding(const std::vector<std::string>& excluded,
                                       const std::string& tail_rule,
                                       const std::string& other_tail_rule = "",
                                       const SharedRule& shared_rule = {});
// A string's tail (content and closing quote) whose first character is not plain ASCII: a
// non-ASCII one, or one written as an escape. Written out in full (no rule references), so that
// its positions are alike to those of the plain tail and shared between grammars.
std::string json_string_other_tail();

}  // namespace agentrt::grammars
