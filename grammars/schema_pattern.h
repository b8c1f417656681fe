// ECMAScript-subset regular expressions (JSON Schema `pattern`, `patternProperties`, formats)
// parsed into a small AST and emitted as EBNF over canonical JSON-string content, so that the
// pattern constrains the decoded string while the grammar matches its escaped serialisation.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "grammars/schema_strings.h"

namespace agentrt::grammars {

struct RegexNode {
  enum class Kind { empty, chars, concat, alternation, repeat };
  Kind kind = Kind::empty;
  CodepointSet chars;                   // Kind::chars
  std::vector<RegexNode> children;      // concat, alternation, repeat (one child)
  int min = 0;
  int max = -1;                         // Kind::repeat; -1 = unbounded
};

// A parsed pattern: the AST plus whether it is anchored at start/end (JSON Schema patterns
// are unanchored searches unless they start with ^ / end with $).
struct ParsedPattern {
  RegexNode root;
  bool anchored_start = false;
  bool anchored_end = false;
};

// Parses `pattern`; throws std::invalid_argument naming the byte offset for syntax errors and
// for unsupported features (lookaround, backreferences, word boundaries, inner anchors,
// Unicode property escapes).
ParsedPattern parse_pattern(std::string_view pattern);

// EBNF for the JSON-string content (without quotes) of strings matching the pattern with
// JSON Schema search semantics.
std::string pattern_to_json_content(std::string_view pattern,
                                   StringEncoding encoding = StringEncoding::json);

// EBNF for the JSON-string content of a node (exact match, no implicit .*).
std::string regex_to_json_content(const RegexNode& node,
                                 StringEncoding encoding = StringEncoding::json);

// Whether `text` (UTF-8) matches the pattern with JSON Schema search semantics; used to check
// literal property names and enum values against patterns.
bool pattern_matches(const ParsedPattern& pattern, std::string_view text);

// When the whole anchored pattern is one character class repeated {min,max} times (e.g.
// ^[a-z0-9]+$), returns that class and bounds; used to intersect with minLength/maxLength.
struct ClassRepeat {
  CodepointSet chars;
  int min = 0;
  int max = -1;
};
std::optional<ClassRepeat> pattern_as_class_repeat(std::string_view pattern);

}  // namespace agentrt::grammars
