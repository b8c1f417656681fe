// The DeepSeek-V3/V4 pre-tokenizer: the `Sequence` of three `Split` (Isolated) regexes from
// tokenizer.json, hand-written over code points so that it is exact (including the
// `\s+(?!\S)` lookahead RE2 lacks) and fast:
//   1. \p{N}{1,3}                 digits in groups of up to three
//   2. [一-龥぀-ゟ゠-ヿ]+            CJK ideograph and kana runs
//   3. [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
//      |  ?[\p{P}\p{S}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
// Each Split keeps both the matches and the text between them as pieces.
#pragma once

#include <string_view>
#include <vector>

#include "engine/unicode.h"

namespace agentrt::engine {

// Appends the pieces of `text` (views into it, in order, covering it exactly) to `pieces`.
void pretokenize(std::string_view text, const UnicodeClasses& classes,
                 std::vector<std::string_view>& pieces);

}  // namespace agentrt::engine
